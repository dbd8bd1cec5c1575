package tui

import (
	"context"
	"io"
	"time"
)

// Backend is everything the dashboard needs from Minions, already scoped to
// one caller: List returns only what the caller may see, and every method
// enforces the caller's permissions. Errors should carry an internal/errs
// class; the dashboard shows them on its status line and never exits on them.
//
// Implementations must be safe for concurrent use: the dashboard calls them
// from tea.Cmd goroutines. Every call gets a context that is cancelled when
// the session ends.
type Backend interface {
	// List returns the caller's VMs (all VMs for an admin).
	List(ctx context.Context) ([]VM, error)
	// Get returns one VM with agent status, console tail, snapshots and URL.
	Get(ctx context.Context, name string) (Detail, error)
	// Create creates and starts a VM. progress, if the backend calls it,
	// reports each step ("allocating address", "booting"); it may be called
	// from any goroutine until Create returns.
	Create(ctx context.Context, req CreateRequest, progress func(step string)) (VM, error)
	Start(ctx context.Context, name string) error
	Stop(ctx context.Context, name string) error
	Restart(ctx context.Context, name string) error
	// Destroy removes the VM, its disk and its snapshots.
	Destroy(ctx context.Context, name string) error
	// Resize changes CPUs, memory and/or disk; zero fields stay unchanged.
	Resize(ctx context.Context, name string, req ResizeRequest) error
	// SnapshotCreate saves the VM's disk, and with req.Memory its memory
	// too (a running VM only; restoring it resumes where it was).
	SnapshotCreate(ctx context.Context, name string, req SnapshotRequest) (Snapshot, error)
	SnapshotList(ctx context.Context, name string) ([]Snapshot, error)
	SnapshotRestore(ctx context.Context, name, snapshot string) error
	SnapshotDelete(ctx context.Context, name, snapshot string) error
	Rename(ctx context.Context, name, newName string) error
	// Copy creates newName as a copy of name (disk and settings).
	Copy(ctx context.Context, name, newName string) (VM, error)
	// Images lists the operating systems Create accepts.
	Images(ctx context.Context) ([]Image, error)
	// Console runs an interactive shell in the VM with a PTY: it copies
	// stdin to the shell and the shell's output to stdout, applies every
	// size received on size (the first one is the initial size) and
	// returns when the shell exits or ctx is cancelled (detach).
	Console(ctx context.Context, name string, stdin io.Reader, stdout io.Writer, size <-chan WindowSize) error
}

// VM statuses the dashboard knows; others are shown as they are.
const (
	StatusRunning  = "running"
	StatusStopped  = "stopped"
	StatusStarting = "starting"
	StatusStopping = "stopping"
	StatusCreating = "creating"
	StatusError    = "error"
)

// VM is one row of the list.
type VM struct {
	ID        string // immutable
	Name      string // unique, mutable
	Status    string // one of the Status constants, or another word
	IP        string
	CPUs      int
	MemoryMiB int
	DiskGiB   int
	Image     string
	Created   time.Time
	StartedAt time.Time // zero when not running
	Owner     string
}

// Running reports whether the VM is running.
func (v VM) Running() bool { return v.Status == StatusRunning }

// Detail is everything the detail page shows about one VM.
type Detail struct {
	VM          VM
	Agent       AgentStatus
	ConsoleTail []string // last lines of the serial console, oldest first
	Snapshots   []Snapshot
	URL         string  // the VM's HTTPS URL, empty when there is none
	Restart     string  // restart policy (no, on-failure, always); empty: not known
	Restarts    int     // automatic restarts so far
	Events      []Event // the VM's most recent events, oldest first
}

// Event is one entry of a VM's audit log: who did what, or what the host
// did by itself (Actor "host").
type Event struct {
	At      time.Time
	Actor   string
	Kind    string
	Message string
}

// AgentStatus is what the guest agent reports.
type AgentStatus struct {
	Connected    bool
	Error        string // why the agent is not reachable, when it is not
	Version      string
	Kernel       string
	Uptime       time.Duration
	Load         [3]float64
	MemTotal     uint64 // bytes
	MemAvailable uint64 // bytes
	DiskTotal    uint64 // bytes
	DiskFree     uint64 // bytes
}

// Snapshot is a saved state of a VM.
type Snapshot struct {
	ID        string
	Name      string
	Created   time.Time
	SizeBytes int64
	Memory    bool // includes memory (restores a running VM)
}

// SnapshotRequest is the snapshot form.
type SnapshotRequest struct {
	Name   string
	Memory bool // also save the memory of the running VM
}

// Kind is what a snapshot holds: "disk" or "disk+memory".
func (s Snapshot) Kind() string {
	if s.Memory {
		return "disk+memory"
	}
	return "disk"
}

// Image is an operating system choice for Create.
type Image struct {
	Name        string
	Description string
	Default     bool
}

// CreateRequest is the create form.
type CreateRequest struct {
	Name      string
	CPUs      int
	MemoryMiB int
	Image     string
	DiskGiB   int // 0: the backend's default
}

// ResizeRequest is the resize form; a zero field stays unchanged.
type ResizeRequest struct {
	CPUs      int
	MemoryMiB int
	DiskGiB   int
}

// WindowSize is a terminal size in cells.
type WindowSize struct {
	Width  int
	Height int
}
