// Package engine is the per-host VM engine: it boots, stops, snapshots,
// restores, copies, resizes and destroys the VMs of one host, records each
// long operation durably with its undo, serialises operations on a VM with
// a per-VM lock, reconciles its records with the processes that really
// run, and dials guest agents.
//
// The engine knows nothing of users, owners, tokens or quotas: that is the
// policy of package service, which calls an Engine. Local (this package)
// drives the hypervisor driver, network and disks of this host; nodeagent
// carries the same interface to another host over NATS, so every request,
// progress and result type here is plain JSON, and the only streams are
// net.Conn.
package engine

import (
	"context"
	"net"
	"time"

	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vsockcli"
)

// Engine runs the VMs ("instances") of one host.
//
// Instances are addressed by their immutable ID (vm.NewID). Every method
// is safe for concurrent use, also across processes sharing one host's
// state: operations on one instance are serialised by its lock (waiting
// until ctx ends, then errs.Unavailable "busy").
//
// Errors carry the classes of internal/errs: NotFound (no such instance
// or snapshot), AlreadyExists (a taken ID, name or snapshot name),
// InvalidArgument, FailedPrecondition (the operation is not allowed in
// the instance's state, see vm.Allowed), ResourceExhausted (no room on
// the host, or refused by the admission hook), Unavailable (a guest that
// does not answer, a busy instance).
//
// Long operations (Create, Start, Restart, Snapshot, RestoreSnapshot) tell
// progress the name of each step as it starts; progress may be nil.
// A failed operation undoes what it made and nothing else.
type Engine interface {
	// Create makes and boots a new instance and returns once its guest
	// agent answers. spec.ID is chosen by the caller (vm.NewID) and must
	// be unused. A failure removes everything that hangs off spec.ID.
	Create(ctx context.Context, spec CreateSpec, progress Progress) (Instance, error)
	// Start boots a stopped instance and waits for its agent.
	Start(ctx context.Context, id string, progress Progress) (Instance, error)
	// Stop powers an instance off: the agent is asked first, then the
	// hypervisor, then the process is killed after the stop timeout. The
	// disk keeps what the guest wrote; the address stays reserved.
	Stop(ctx context.Context, id string) (Instance, error)
	// Restart stops (if it runs) and starts an instance.
	Restart(ctx context.Context, id string, progress Progress) (Instance, error)
	// Destroy kills an instance and removes its disk, snapshots, TAP,
	// sockets, address and record. It is idempotent: a missing instance
	// is not an error.
	Destroy(ctx context.Context, id string) error
	// Rename changes an instance's name (its record and, when it runs,
	// the guest's hostname). Paths and addresses hang off the ID.
	Rename(ctx context.Context, id, name string) (Instance, error)
	// Resize changes vCPUs and memory (from the next start) and grows the
	// disk (stopped instances only; disks never shrink). Zero fields are
	// left alone.
	Resize(ctx context.Context, id string, spec ResizeSpec) (Instance, error)

	// Snapshot captures an instance's disk (and with spec.Memory its
	// running state), consistently: filesystems frozen by the agent or
	// the VM paused while the copy-on-write delta is copied.
	Snapshot(ctx context.Context, id string, spec SnapshotSpec, progress Progress) (SnapshotInfo, error)
	// Snapshots lists an instance's snapshots, oldest first.
	Snapshots(ctx context.Context, id string) ([]SnapshotInfo, error)
	// RestoreSnapshot puts an instance back to a snapshot, atomically (the
	// disk is prepared aside and renamed into place). An instance that ran
	// runs again; a memory snapshot resumes its saved processes.
	RestoreSnapshot(ctx context.Context, id, snapshot string, progress Progress) (Instance, error)
	// DeleteSnapshot removes a snapshot and its files.
	DeleteSnapshot(ctx context.Context, id, snapshot string) error

	// Get returns one instance; a record that says running while its
	// hypervisor is gone is reconciled first (see Reconcile).
	Get(ctx context.Context, id string) (Instance, error)
	// List returns every instance of this host.
	List(ctx context.Context) ([]Instance, error)
	// Reconcile makes the records agree with the processes that run:
	// operations whose process died midway are finished or rolled back,
	// instances whose hypervisor is gone are marked stopped (each such
	// exit is reported once to the ExitFunc set with OnExit), and dead
	// helper processes of running instances are restarted. Cheap and
	// idempotent.
	Reconcile(ctx context.Context) error
	// OnExit sets the function told about each instance found down
	// although it was recorded running (a crash, a guest power-off, a host
	// reboot). It is called after the instance is recorded stopped, from
	// the goroutine that noticed, at most once per exit. Set it before
	// the first operation; nil turns the reports off.
	OnExit(fn ExitFunc)
	// ReattachPorts puts every running instance's TAP back on the bridge
	// with its anti-spoofing entry (after a daemon or firewall restart).
	ReattachPorts(ctx context.Context) error
	// Capacity reports what this host has and what is allocated, for a
	// scheduler.
	Capacity(ctx context.Context) (Capacity, error)

	// DialAgent opens a byte stream to a running instance's guest agent
	// channel (the agent speaks SSH on it). Agent is the usual way in.
	DialAgent(ctx context.Context, id string) (net.Conn, error)
	// Agent returns an authenticated client of a running instance's guest
	// agent (the host key presented, the agent's pinned key checked). The
	// caller closes it. The engine may lend one pooled connection to many
	// callers at once (each call then costs an SSH channel, not a dial):
	// Close returns the loan and never ends another caller's channels. A
	// stopped, restarted or restored instance's connection is dropped, so
	// a new hypervisor process always gets a fresh one.
	Agent(ctx context.Context, id string) (*vsockcli.Client, error)
	// ConsoleLog returns the path of an instance's serial console log on
	// this host (read it with package consolelog: capped and rotated).
	ConsoleLog(ctx context.Context, id string) (string, error)
}

// Progress receives the name of each step of a long operation as it
// starts ("image", "allocate", "disk", "network", "boot", "agent"...).
type Progress func(step string)

// Say calls p with step, if p is set.
func (p Progress) Say(step string) {
	if p != nil {
		p(step)
	}
}

// CreateSpec asks for a new instance. Numbers are final: the caller
// applies its defaults and limits.
type CreateSpec struct {
	// ID is the new instance's ID (vm.NewID); paths, TAP and snapshots
	// hang off it.
	ID string `json:"id"`
	// Name is the instance's unique, mutable label (vm.ValidName).
	Name string `json:"name"`
	// Owner is an opaque tag the caller stores with the instance (the
	// control plane's owner ID). The engine never interprets it; it is
	// handed back in Admission and Instance.
	Owner string `json:"owner,omitempty"`
	// Image is an image reference ("os" or "os@version"); the engine
	// resolves it on this host. Ignored with CopyFrom (the source's image).
	Image     string `json:"image,omitempty"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	// DiskGiB is the disk size; 0 takes the larger of DefaultDiskGiB and
	// the image's size rounded up to whole GiB (the source's size with
	// CopyFrom).
	DiskGiB int `json:"disk_gib,omitempty"`
	// DefaultDiskGiB is the caller's default disk size (see DiskGiB).
	DefaultDiskGiB int `json:"default_disk_gib,omitempty"`
	// AuthorizedKeys are root's authorized_keys lines, written into the
	// guest after its first boot.
	AuthorizedKeys []string `json:"authorized_keys,omitempty"`
	// CopyFrom makes the instance a copy of another instance of this host
	// (its disk, consistently when it runs, or one of its snapshots) with
	// an identity of its own (hostname, machine-id, SSH host keys,
	// entropy, clock).
	CopyFrom *CopySource `json:"copy_from,omitempty"`
	// Cold boots from the image even when a warm template of the image
	// version and shape exists (see Template).
	Cold bool `json:"cold,omitempty"`
}

// CopySource names what a copy starts from.
type CopySource struct {
	ID       string `json:"id"`                 // the source instance
	Snapshot string `json:"snapshot,omitempty"` // its snapshot; "" for its current disk
}

// ResizeSpec changes an instance's size; zero fields are left alone.
type ResizeSpec struct {
	CPUs      int `json:"cpus,omitempty"`
	MemoryMiB int `json:"memory_mib,omitempty"`
	DiskGiB   int `json:"disk_gib,omitempty"`
}

// SnapshotSpec asks for a snapshot.
type SnapshotSpec struct {
	Name   string `json:"name"`             // required (vm.ValidSnapshotName)
	Memory bool   `json:"memory,omitempty"` // also save the running VM's memory
}

// SnapshotInfo is one snapshot of an instance.
type SnapshotInfo struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Memory    bool      `json:"memory"`
	SizeBytes int64     `json:"size_bytes"`
	CreatedAt time.Time `json:"created_at"`
}

// Instance is a VM as its host sees it.
type Instance struct {
	ID        string   `json:"id"`
	Name      string   `json:"name"`
	Owner     string   `json:"owner,omitempty"` // CreateSpec.Owner, uninterpreted
	State     vm.State `json:"state"`
	Image     string   `json:"image"` // resolved reference, "os@version"
	CPUs      int      `json:"cpus"`
	MemoryMiB int      `json:"memory_mib"`
	DiskGiB   int      `json:"disk_gib"`
	IP        string   `json:"ip"`
	MAC       string   `json:"mac"`
	// PID is the hypervisor's process ID while the instance runs.
	PID       int       `json:"pid,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// Note says what State cannot (e.g. store.NoteDiskMissing).
	Note string `json:"note,omitempty"`
	// Boot says how Create started the instance: BootWarm (restored from
	// a template) or BootCold (booted from the image); set in Create's
	// result only.
	Boot string `json:"boot,omitempty"`
	// Warnings are what Create wants the user to know (a template that
	// failed and was dropped, say); Create's result only.
	Warnings []string `json:"warnings,omitempty"`
}

// Exit reasons (Exit.Reason).
const (
	ExitCrashed    = "crashed"     // the hypervisor exited without a guest's last word (killed, OOM)
	ExitPanic      = "panic"       // the guest kernel panicked (panic=-1 and -no-reboot end the hypervisor)
	ExitPoweroff   = "poweroff"    // the guest powered itself off
	ExitReboot     = "reboot"      // the guest rebooted itself (the hypervisor exits on it)
	ExitHostReboot = "host-reboot" // the processes and run directory are gone
)

// Exit reports an instance found down although it was recorded running.
type Exit struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Owner     string    `json:"owner,omitempty"`
	Reason    string    `json:"reason"`              // Exit* constants
	Detail    string    `json:"detail,omitempty"`    // the guest's last kernel line that says why
	StartedAt time.Time `json:"started_at,omitzero"` // when the run that ended began
	At        time.Time `json:"at"`                  // when the exit was noticed
}

// ExitFunc is told about an exit (see Engine.OnExit).
type ExitFunc func(ctx context.Context, e Exit)

// Capacity is what a host offers a scheduler.
type Capacity struct {
	Driver string `json:"driver"` // hypervisor driver name
	KVM    bool   `json:"kvm"`    // hardware acceleration (else TCG)
	// MemorySnapshot says Snapshot with Memory works on this host.
	MemorySnapshot bool `json:"memory_snapshot"`
	CPUs           int  `json:"cpus"` // host CPUs
	// MemoryMiB is the host's memory; the scheduler applies its own
	// overcommit ratio.
	MemoryMiB int64 `json:"memory_mib"`
	// AllocatedMemoryMiB is what instances that are not stopped (or are
	// being started) hold now.
	AllocatedMemoryMiB int64 `json:"allocated_memory_mib"`
	// DiskFreeBytes is free space on the state filesystem.
	DiskFreeBytes int64 `json:"disk_free_bytes"`
	Instances     int   `json:"instances"`
}

// Admission kinds (Admission.Kind).
const (
	AdmitCreate   = "create"   // a new instance (also a copy)
	AdmitStart    = "start"    // a stopped instance starts (also restore of a memory snapshot)
	AdmitResize   = "resize"   // an instance grows
	AdmitSnapshot = "snapshot" // a snapshot is about to be kept
)

// Admission describes a claim on resources, for the caller's admission
// policy (quotas, overcommit): see Local's Config.Admit.
type Admission struct {
	Kind  string `json:"kind"` // Admit* constants
	ID    string `json:"id"`
	Name  string `json:"name"`
	Owner string `json:"owner,omitempty"`
	// Was is what the instance held before (resize); zero for a create.
	Was Resources `json:"was"`
	// Want is what the instance will hold.
	Want Resources `json:"want"`
	// SnapshotBytes is the snapshot's size (an estimate before it is
	// taken, the real size when it is recorded).
	SnapshotBytes int64 `json:"snapshot_bytes,omitempty"`
}

// Resources are an instance's size.
type Resources struct {
	CPUs      int `json:"cpus"`
	MemoryMiB int `json:"memory_mib"`
	DiskGiB   int `json:"disk_gib"`
}
