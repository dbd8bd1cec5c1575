package service

import (
	"context"
	"io"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
)

// Backend is Minions as every frontend sees it: the service bound to one
// caller. The CLI, the TUI, the SSH gateway and the HTTP API all take a
// Backend, and there are exactly two implementations:
//
//   - in-process: Service.As(caller) (a *Bound);
//   - over HTTP: api.Client (talking to a daemon's API, which serves it
//     with Service.As of the token's user).
//
// Both pass the same suite (service/backendtest), so a frontend cannot
// tell them apart. Every method acts as the bound caller: another user's
// VM is errs.NotFound, never errs.PermissionDenied (names do not leak).
// Errors carry an internal/errs class, the same one both ways. Safe for
// concurrent use.
//
// A new operation touches: a Service method, this interface (and Bound's
// one-line forwarder), an API route and an api.Client method.
type Backend interface {
	// Whoami returns the bound caller.
	Whoami(ctx context.Context) (Caller, error)

	VMBackend
	GuestBackend
	SnapshotBackend
	KeyBackend
	WebBackend
	ImageBackend
	OpsBackend
	AdminBackend
	HostBackend
	MoveBackend

	// Close releases what the backend holds (connections, the database a
	// CLI opened). The backend is unusable afterwards.
	Close() error
}

// VMBackend are the lifecycle operations. Progress, if not nil, is called with
// each step's name, from the calling goroutine or another one, until the
// method returns.
type VMBackend interface {
	Create(ctx context.Context, req CreateRequest, progress Progress) (VM, error)
	// List returns the caller's VMs (every VM for an admin).
	List(ctx context.Context) ([]VM, error)
	Get(ctx context.Context, name string) (VM, error)
	Start(ctx context.Context, name string, progress Progress) (VM, error)
	Stop(ctx context.Context, name string) (VM, error)
	Restart(ctx context.Context, name string, progress Progress) (VM, error)
	// Destroy removes the VM, its disk and its snapshots.
	Destroy(ctx context.Context, name string) error
	// Resize changes CPUs, memory and/or disk; zero fields stay unchanged.
	Resize(ctx context.Context, name string, req ResizeRequest) (VM, error)
	Rename(ctx context.Context, name, newName string) (VM, error)
	Copy(ctx context.Context, name string, req CopyRequest, progress Progress) (VM, error)
	// Fork clones a running VM with its memory (see Service.Fork).
	Fork(ctx context.Context, name string, req ForkRequest, progress Progress) (VM, error)
}

// GuestBackend are the streams into a running VM: commands (and interactive
// shells, with a PTY), the agent's status and the serial console.
type GuestBackend interface {
	// Exec runs req in the guest, copying req.Stdin to it and its output
	// to req.Stdout/req.Stderr until it exits, and returns its exit status
	// (128+n when killed by signal n). A non-nil error means it could not
	// be run or its status was lost (errs.FailedPrecondition: the VM does
	// not run; errs.Unavailable: the agent does not answer). When ctx ends
	// the command is killed.
	Exec(ctx context.Context, name string, req ExecRequest) (int, error)
	// Status asks the VM's guest agent for its status.
	Status(ctx context.Context, name string) (GuestStatus, error)
	// Logs copies the serial console log to w; with follow it keeps
	// copying what the guest prints until ctx ends (then returns nil).
	Logs(ctx context.Context, name string, follow bool, w io.Writer) error
	// Forward opens a TCP connection to port on the guest's loopback (a
	// port forward); close it when done. errs.InvalidArgument for a port
	// outside 1-65535, errs.Unavailable when nothing accepts it.
	Forward(ctx context.Context, name string, port int) (io.ReadWriteCloser, error)
}

// SnapshotBackend are a VM's saved states.
type SnapshotBackend interface {
	CreateSnapshot(ctx context.Context, name string, req SnapshotRequest, progress Progress) (Snapshot, error)
	ListSnapshots(ctx context.Context, name string) ([]Snapshot, error)
	RestoreSnapshot(ctx context.Context, name, snapshot string, progress Progress) (VM, error)
	DeleteSnapshot(ctx context.Context, name, snapshot string) error
}

// KeyBackend are the caller's own keys; a key is added with proof of
// possession (see KeyProof).
type KeyBackend interface {
	SSHKeyChallenge(ctx context.Context) (KeyChallenge, error)
	AddSSHKey(ctx context.Context, proof KeyProof) (SSHKey, error)
	ListSSHKeys(ctx context.Context) ([]SSHKey, error)
	RemoveSSHKey(ctx context.Context, idOrFingerprint string) error
}

// WebBackend is the proxy's side of a VM: its port, who may reach it, custom
// domains.
type WebBackend interface {
	// Expose sets the VM port the proxy forwards to.
	Expose(ctx context.Context, name string, port int) (WebInfo, error)
	// Share changes public/private and mints links (see Service.Share).
	Share(ctx context.Context, name string, req ShareRequest) (WebInfo, error)
	AddDomain(ctx context.Context, name, domain string) (Domain, error)
	VerifyDomain(ctx context.Context, name, domain string) (Domain, error)
	ListDomains(ctx context.Context, name string) ([]Domain, error)
	RemoveDomain(ctx context.Context, name, domain string) error
}

// ImageBackend are the operating systems VMs are created from: listing them
// and the default (everyone signed in), building, removing and setting
// the default (admins).
type ImageBackend interface {
	ListImages(ctx context.Context) ([]ImageInfo, error)
	DefaultImage(ctx context.Context) (ImageDefault, error)
	SetDefaultImage(ctx context.Context, ref string) (ImageDefault, error)
	BuildImage(ctx context.Context, req ImageBuildRequest, progress Progress) (ImageInfo, error)
	RemoveImage(ctx context.Context, ref string) ([]ImageInfo, error)
	// WarmImage builds the warm template of an image and shape unless it
	// exists. Admins only.
	WarmImage(ctx context.Context, req WarmRequest, progress Progress) (TemplateInfo, error)
}

// OpsBackend are a VM's restart policy and the event log.
type OpsBackend interface {
	SetRestartPolicy(ctx context.Context, name, policy string) (VM, error)
	Events(ctx context.Context, f EventFilter) ([]Event, error)
}

// AdminBackend is users, quotas and tokens (admins; a user may manage their own
// tokens).
type AdminBackend interface {
	// AddUser creates a user; a key (PublicKey != "") is proven by the
	// calling admin (see Service.AddUser).
	AddUser(ctx context.Context, name string, admin bool, sshKey KeyProof) (User, error)
	ListUsers(ctx context.Context) ([]User, error)
	RemoveUser(ctx context.Context, name string) error
	SetQuota(ctx context.Context, name string, q Quota) (User, error)
	// CreateToken makes a token for user ("": the caller); expires 0: never.
	CreateToken(ctx context.Context, user, name string, expires time.Duration) (NewToken, error)
	// ListTokens lists user's tokens ("": the caller's, every user's for an admin).
	ListTokens(ctx context.Context, user string) ([]Token, error)
	RevokeToken(ctx context.Context, id string) error
}

// HostBackend is the cluster's host registry (admins; see hosts.go).
type HostBackend interface {
	HostAdd(ctx context.Context, name string) (HostInvite, error)
	HostList(ctx context.Context) ([]Host, error)
	HostStatus(ctx context.Context, name string) (Host, error)
	HostCordon(ctx context.Context, name string) (Host, error)
	HostUncordon(ctx context.Context, name string) (Host, error)
	HostRemove(ctx context.Context, name string) error
}

// GuestStatus is what a VM's guest agent reports (its own protocol type:
// the guest writes these strings, so clean them before printing).
type GuestStatus = proto.Status

// ExecRequest is one command to run in a guest.
type ExecRequest struct {
	// Command is run with /bin/sh -c. Empty with TTY set: a login shell.
	Command string
	// Argv, when set, replaces Command with its shell-quoted words.
	Argv []string
	Env  map[string]string
	// Stdin is copied to the command until EOF (then its stdin closes).
	Stdin io.Reader
	// Stdout and Stderr receive the output (nil: discarded); they may be
	// the same writer.
	Stdout, Stderr io.Writer
	// TTY allocates a pseudo-terminal of Width x Height (default 80x24)
	// with TERM=Term (default xterm-256color); stderr then arrives on
	// Stdout.
	TTY           bool
	Term          string
	Width, Height int
	// Resize and Signals, when set, forward window changes and signals
	// ("INT", "TERM", "KILL", ...) until the command exits.
	Resize  <-chan WindowSize
	Signals <-chan string
}

// WindowSize is a terminal size in cells.
type WindowSize struct {
	Width, Height int
}

// MoveBackend moves VMs between the hosts of a cluster (issue 15).
type MoveBackend interface {
	// Move moves a VM to another host, cold (see Service.Move).
	Move(ctx context.Context, name string, req MoveRequest, progress Progress) (VM, error)
	// HostDrain cordons a host and moves every VM off it (admins; see
	// Service.HostDrain).
	HostDrain(ctx context.Context, name string, req DrainRequest, progress Progress) (DrainResult, error)
}
