package cli

import (
	"context"
	"io"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/vsockcli"
)

// Backend is what commands call: the service bound to one caller, locally
// or through the HTTP API of a daemon.
type Backend interface {
	Whoami(ctx context.Context) (service.Caller, error)

	Create(ctx context.Context, req service.CreateRequest, progress service.Progress) (service.VM, error)
	List(ctx context.Context) ([]service.VM, error)
	Get(ctx context.Context, name string) (service.VM, error)
	Start(ctx context.Context, name string, progress service.Progress) (service.VM, error)
	Stop(ctx context.Context, name string) (service.VM, error)
	Restart(ctx context.Context, name string, progress service.Progress) (service.VM, error)
	Destroy(ctx context.Context, name string) error

	// Exec runs a command in the guest and returns its exit status.
	Exec(ctx context.Context, name string, req vsockcli.ExecRequest) (int, error)
	Status(ctx context.Context, name string) (proto.Status, error)
	// Logs copies the serial console log to w; with follow it keeps
	// copying until ctx ends.
	Logs(ctx context.Context, name string, follow bool, w io.Writer) error
	// Agent returns a raw agent client (vsock debugging); remote backends
	// return errs.FailedPrecondition.
	Agent(ctx context.Context, name string) (*vsockcli.Client, error)

	CreateSnapshot(ctx context.Context, name string, req service.SnapshotRequest, progress service.Progress) (service.Snapshot, error)
	ListSnapshots(ctx context.Context, name string) ([]service.Snapshot, error)
	RestoreSnapshot(ctx context.Context, name, snapshot string, progress service.Progress) (service.VM, error)
	DeleteSnapshot(ctx context.Context, name, snapshot string) error
	Resize(ctx context.Context, name string, req service.ResizeRequest) (service.VM, error)
	Rename(ctx context.Context, name, newName string) (service.VM, error)
	Copy(ctx context.Context, name string, req service.CopyRequest, progress service.Progress) (service.VM, error)

	// SSHKeyChallenge and AddSSHKey add a key with proof of possession
	// (see service.KeyProof).
	SSHKeyChallenge(ctx context.Context) (service.KeyChallenge, error)
	AddSSHKey(ctx context.Context, proof service.KeyProof) (service.SSHKey, error)
	ListSSHKeys(ctx context.Context) ([]service.SSHKey, error)
	RemoveSSHKey(ctx context.Context, idOrFingerprint string) error

	Close() error
}

// WebBackend is the web part of a backend: the proxy's port, who may
// reach a VM, sign-in and share links, custom domains. Local and api.Client
// implement it; the web commands type-assert (like AdminBackend), so other
// Backends need not.
type WebBackend interface {
	// Expose sets the VM port the proxy forwards to.
	Expose(ctx context.Context, name string, port int) (service.WebInfo, error)
	// Share changes public/private and mints links (see service.Share).
	Share(ctx context.Context, name string, req service.ShareRequest) (service.WebInfo, error)
	AddDomain(ctx context.Context, name, domain string) (service.Domain, error)
	VerifyDomain(ctx context.Context, name, domain string) (service.Domain, error)
	ListDomains(ctx context.Context, name string) ([]service.Domain, error)
	RemoveDomain(ctx context.Context, name, domain string) error
}
