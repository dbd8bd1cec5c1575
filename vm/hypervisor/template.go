package hypervisor

import "context"

// Templater is implemented by drivers that can keep a booted VM as a warm
// template and start clones of it whose memory is shared with the template
// copy-on-write, so that starting a clone costs about the same for any
// guest memory size and N clones share the pages none of them wrote.
//
// The life of a template, all in one directory dir that the caller owns:
//
//  1. BootTemplate(spec, dir) boots spec with its RAM in a file in dir.
//  2. The caller waits until the guest is ready (agent up, services
//     started), then SaveTemplate(h, dir) saves the device state next to
//     the RAM file and ends the template VM. From then on nothing in dir is
//     ever written again; the template's disks must not be written either
//     (clones run on copy-on-write children of them).
//  3. StartClone(spec, dir) starts a VM from the template, running, as many
//     times as wanted and concurrently. spec must have the template's shape
//     (CPUs, memory, disk count and formats, network presence, agent
//     channel kind) but its own ID, run dir, disks (children of the
//     template's), TAP, MAC and vsock CID. The guest resumes exactly where
//     the template was saved: it still believes it is the template (its
//     hostname, machine-id, keys, IP and MAC, clock, RNG state) until the
//     caller re-identifies it through its agent.
//
// Errors: a spec that does not fit the template is errs.FailedPrecondition;
// a dir without a complete template is errs.NotFound; a driver or host
// configuration that cannot share memory (e.g. the per-VM jail where the
// hypervisor would need write access to the shared file) is
// errs.FailedPrecondition wrapping ErrUnsupported. A failed call leaves no
// process behind; SaveTemplate leaves the VM paused on failure (the caller
// kills it) and dir without a template.
//
// QEMU implements it with a file-backed RAM (share=on for the template,
// share=off, a private copy-on-write mapping, for clones) and the
// x-ignore-shared migration capability. Cloud Hypervisor could implement it
// with vm.snapshot and a restore with memory_restore_mode=ondemand
// (userfaultfd): restore time then does not grow with memory either, but
// each clone copies every page it touches into memory of its own, so clones
// share nothing; its snapshot offload (local send/receive-migration with
// memfds from a daemon) hands out the memory itself, shared writable, not
// copy-on-write. A clone's new TAP would go through vm.restore's net_fds.
type Templater interface {
	BootTemplate(ctx context.Context, spec Spec, dir string) (*Handle, error)
	SaveTemplate(ctx context.Context, h *Handle, dir string) error
	StartClone(ctx context.Context, spec Spec, dir string) (*Handle, error)
}
