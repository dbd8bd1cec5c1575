// Package hypervisor defines the contract every VM driver meets (QEMU,
// Cloud Hypervisor, the fake used by unit tests) and the types that cross it.
//
// A driver launches and controls one hypervisor process per VM. It does no
// bookkeeping of its own: everything needed to find a running VM again (after
// the CLI exits or the daemon restarts) is in the Handle, which the caller
// persists. Drivers are safe for concurrent use on different VMs; the caller
// serialises operations on one VM.
package hypervisor

import (
	"context"
	"errors"
	"time"
)

// ErrUnsupported is returned (wrapped) by an operation the driver or the
// host cannot do, such as live resize on QEMU microvm.
var ErrUnsupported = errors.New("not supported by this hypervisor driver")

// Spec is everything needed to boot a VM.
type Spec struct {
	ID        string // immutable VM ID; names nothing in the guest
	Name      string // current name, used for the process title only
	CPUs      int
	MemoryMiB int

	Kernel    string // path to an uncompressed vmlinux (PVH) or a bzImage
	Initramfs string // path to the initramfs (may be empty)
	Cmdline   string // complete kernel command line

	Disks []Disk    // Disks[0] is the root disk (/dev/vda in the guest)
	Net   *NetIface // nil for no network

	// RunDir is a private directory (mode 0700) for sockets and pid files.
	// It must be short: unix socket paths are limited to 107 bytes.
	RunDir string
	// ConsoleLog is the file the serial console is appended to.
	ConsoleLog string
	// VsockCID is the guest's vsock context ID (>= 3), unique on the host.
	VsockCID uint32
}

// Disk is one block device.
type Disk struct {
	Path     string
	Format   string // "qcow2" or "raw"
	ReadOnly bool
}

// NetIface is a virtio-net device backed by an existing TAP.
type NetIface struct {
	TAP string
	MAC string // "52:54:00:xx:xx:xx"
}

// Handle identifies a running hypervisor process. It is persisted by the
// caller and passed back to every later call, possibly from another process.
type Handle struct {
	Driver string `json:"driver"`
	PID    int    `json:"pid"`
	// StartTime is the process start time in clock ticks since boot
	// (/proc/PID/stat field 22); with PID it tells a reused PID apart.
	StartTime uint64 `json:"start_time"`
	// APISocket is the control socket (QMP for QEMU, the REST API for
	// Cloud Hypervisor).
	APISocket string `json:"api_socket"`
	// Agent is how to reach the guest agent.
	Agent AgentEndpoint `json:"agent"`
	// Helpers are extra host processes the driver started for this VM
	// (for QEMU on a host without vhost-vsock, the agent relay). They are
	// stopped with the VM.
	Helpers []Process `json:"helpers,omitempty"`
	RunDir  string    `json:"run_dir"`
	// UID is the unprivileged uid the hypervisor and helpers run as and
	// Cgroup their cgroup (relative to the hierarchy root), when the
	// driver jails them; 0 and "" otherwise. The cgroup is removed with
	// the VM.
	UID    int    `json:"uid,omitempty"`
	Cgroup string `json:"cgroup,omitempty"`
}

// Process is a host process identified by PID and start time.
type Process struct {
	Name      string `json:"name"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
}

// AgentEndpoint says how the host dials the guest agent.
type AgentEndpoint struct {
	// Kind is "hybrid-vsock" (a unix socket speaking Cloud Hypervisor's
	// "CONNECT <port>\n" / "OK <n>\n" handshake, also offered by the QEMU
	// agent relay) or "vsock" (AF_VSOCK to CID:Port).
	Kind string `json:"kind"`
	Path string `json:"path,omitempty"`
	CID  uint32 `json:"cid,omitempty"`
	Port uint32 `json:"port"`
}

// State is what the hypervisor reports.
type State string

// States.
const (
	StateRunning State = "running"
	StatePaused  State = "paused"
	StateStopped State = "stopped" // the process is gone
)

// Info is a point-in-time view of a VM's hypervisor process.
type Info struct {
	State     State
	CPUs      int
	MemoryMiB int
}

// Caps says what a driver can do on this host.
type Caps struct {
	KVM            bool // hardware acceleration in use
	LiveResize     bool
	MemorySnapshot bool
	Vsock          bool // AF_VSOCK agent channel (else a relay)
}

// Driver is one hypervisor.
//
// Start returns once the hypervisor process runs the guest (not when the
// guest is ready). If Start fails it has undone everything it did: no
// process, socket or helper is left behind. Shutdown asks the guest to power
// off, waits up to timeout for the process to exit, then kills it; it is
// idempotent and succeeds on an already stopped VM. Kill is immediate and
// idempotent. Both remove the sockets Start created, but never the disks.
type Driver interface {
	Name() string
	Caps() Caps
	Start(ctx context.Context, spec Spec) (*Handle, error)
	Shutdown(ctx context.Context, h *Handle, timeout time.Duration) error
	Kill(ctx context.Context, h *Handle) error
	Pause(ctx context.Context, h *Handle) error
	Resume(ctx context.Context, h *Handle) error
	Info(ctx context.Context, h *Handle) (Info, error)
	// Alive reports whether the hypervisor process of h still runs (PID
	// and start time both match). It does no I/O beyond /proc.
	Alive(h *Handle) bool
	// SaveState writes the VM's memory and device state to dir (the VM is
	// paused while it does and stays paused); disks are not copied.
	SaveState(ctx context.Context, h *Handle, dir string) error
	// Restore starts a VM from state saved by SaveState, running.
	Restore(ctx context.Context, spec Spec, dir string) (*Handle, error)
	// Resize changes vCPUs and memory of a running VM (ErrUnsupported
	// where the driver cannot do it live).
	Resize(ctx context.Context, h *Handle, cpus, memoryMiB int) error
}

// Repairer is implemented by drivers whose VMs depend on helper processes
// that can be restarted while the hypervisor keeps running (the QEMU agent
// relay). The supervisor calls it for running VMs.
type Repairer interface {
	// Repair restarts the dead helpers of a running VM. It returns the
	// updated handle and whether anything was restarted; a VM whose
	// hypervisor is gone is left alone.
	Repair(ctx context.Context, h *Handle) (*Handle, bool, error)
}
