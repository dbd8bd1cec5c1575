package hypervisor

import "context"

// Forker is implemented by drivers that can start a copy of a running VM
// from its saved state (fork): the state SaveState wrote while the source
// was paused is started as another VM, with its own ID, run dir, disks
// (copies of the source's, taken at the same paused instant), TAP, MAC,
// vsock CID and kernel command line (read on a reboot of the copy).
//
// RestoreCopy is Restore for that other VM: the spec's shape (CPUs,
// memory, disk count and formats, network presence, agent channel kind)
// must match the saved machine (else errs.FailedPrecondition), but its MAC
// and vsock CID may differ. The guest resumes as the source (its MAC, IP,
// hostname, keys, RNG state) until the caller re-identifies it through its
// agent. dir is only read; on failure nothing is left running.
type Forker interface {
	// SaveCopy is SaveState (the VM is left paused) for a copy started at
	// once from dir: the files need not reach stable storage.
	SaveCopy(ctx context.Context, h *Handle, dir string) error
	RestoreCopy(ctx context.Context, spec Spec, dir string) (*Handle, error)
}
