package cli

import (
	"context"
	"io"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/vsockcli"
)

// Local is a Backend that calls a Service in this process as one caller.
type Local struct {
	Svc    *service.Service
	Caller service.Caller
	// OnClose runs on Close (closing the database the CLI opened).
	OnClose func() error
	// SessionKey is the key the caller's SSH session authenticated with
	// (set only by the SSH gateway): `ssh-key add` without an argument
	// registers it, the session being the proof of possession.
	SessionKey ssh.PublicKey
}

var _ Backend = (*Local)(nil)

func (l *Local) Whoami(context.Context) (service.Caller, error) { return l.Caller, nil }
func (l *Local) Create(ctx context.Context, req service.CreateRequest, p service.Progress) (service.VM, error) {
	return l.Svc.Create(ctx, l.Caller, req, p)
}
func (l *Local) List(ctx context.Context) ([]service.VM, error) { return l.Svc.List(ctx, l.Caller) }
func (l *Local) Get(ctx context.Context, name string) (service.VM, error) {
	return l.Svc.Get(ctx, l.Caller, name)
}
func (l *Local) Start(ctx context.Context, name string, p service.Progress) (service.VM, error) {
	return l.Svc.Start(ctx, l.Caller, name, p)
}
func (l *Local) Stop(ctx context.Context, name string) (service.VM, error) {
	return l.Svc.Stop(ctx, l.Caller, name)
}
func (l *Local) Restart(ctx context.Context, name string, p service.Progress) (service.VM, error) {
	return l.Svc.Restart(ctx, l.Caller, name, p)
}
func (l *Local) Destroy(ctx context.Context, name string) error {
	return l.Svc.Destroy(ctx, l.Caller, name)
}

func (l *Local) Agent(ctx context.Context, name string) (*vsockcli.Client, error) {
	return l.Svc.Agent(ctx, l.Caller, name)
}

func (l *Local) Exec(ctx context.Context, name string, req vsockcli.ExecRequest) (int, error) {
	cl, err := l.Svc.Agent(ctx, l.Caller, name)
	if err != nil {
		return -1, err
	}
	defer cl.Close()
	return cl.Exec(ctx, req)
}

func (l *Local) Status(ctx context.Context, name string) (proto.Status, error) {
	return l.Svc.AgentStatus(ctx, l.Caller, name)
}

func (l *Local) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	return l.Svc.CopyConsole(ctx, l.Caller, name, follow, w)
}

func (l *Local) CreateSnapshot(ctx context.Context, name string, req service.SnapshotRequest, p service.Progress) (service.Snapshot, error) {
	return l.Svc.CreateSnapshot(ctx, l.Caller, name, req, p)
}
func (l *Local) ListSnapshots(ctx context.Context, name string) ([]service.Snapshot, error) {
	return l.Svc.ListSnapshots(ctx, l.Caller, name)
}
func (l *Local) RestoreSnapshot(ctx context.Context, name, snap string, p service.Progress) (service.VM, error) {
	return l.Svc.RestoreSnapshot(ctx, l.Caller, name, snap, p)
}
func (l *Local) DeleteSnapshot(ctx context.Context, name, snap string) error {
	return l.Svc.DeleteSnapshot(ctx, l.Caller, name, snap)
}
func (l *Local) Resize(ctx context.Context, name string, req service.ResizeRequest) (service.VM, error) {
	return l.Svc.Resize(ctx, l.Caller, name, req)
}
func (l *Local) Rename(ctx context.Context, name, newName string) (service.VM, error) {
	return l.Svc.Rename(ctx, l.Caller, name, newName)
}
func (l *Local) Copy(ctx context.Context, name string, req service.CopyRequest, p service.Progress) (service.VM, error) {
	return l.Svc.Copy(ctx, l.Caller, name, req, p)
}

func (l *Local) SSHKeyChallenge(ctx context.Context) (service.KeyChallenge, error) {
	return l.Svc.SSHKeyChallenge(ctx, l.Caller)
}
func (l *Local) AddSSHKey(ctx context.Context, p service.KeyProof) (service.SSHKey, error) {
	return l.Svc.AddSSHKey(ctx, l.Caller, p)
}

// AddSessionKey registers SessionKey, the key the SSH session behind this
// backend authenticated with (errs.FailedPrecondition without one).
func (l *Local) AddSessionKey(ctx context.Context) (service.SSHKey, error) {
	if l.SessionKey == nil {
		return service.SSHKey{}, errs.New(errs.FailedPrecondition, "this session did not log in with an ssh key")
	}
	return l.Svc.AddSessionKey(ctx, l.Caller, l.SessionKey)
}
func (l *Local) ListSSHKeys(ctx context.Context) ([]service.SSHKey, error) {
	return l.Svc.ListSSHKeys(ctx, l.Caller)
}
func (l *Local) RemoveSSHKey(ctx context.Context, id string) error {
	return l.Svc.RemoveSSHKey(ctx, l.Caller, id)
}

func (l *Local) Close() error {
	if l.OnClose != nil {
		return l.OnClose()
	}
	return nil
}

var _ WebBackend = (*Local)(nil)

func (l *Local) Expose(ctx context.Context, name string, port int) (service.WebInfo, error) {
	return l.Svc.Expose(ctx, l.Caller, name, port)
}
func (l *Local) Share(ctx context.Context, name string, req service.ShareRequest) (service.WebInfo, error) {
	return l.Svc.Share(ctx, l.Caller, name, req)
}
func (l *Local) AddDomain(ctx context.Context, name, domain string) (service.Domain, error) {
	return l.Svc.AddDomain(ctx, l.Caller, name, domain)
}
func (l *Local) VerifyDomain(ctx context.Context, name, domain string) (service.Domain, error) {
	return l.Svc.VerifyDomain(ctx, l.Caller, name, domain)
}
func (l *Local) ListDomains(ctx context.Context, name string) ([]service.Domain, error) {
	return l.Svc.ListDomains(ctx, l.Caller, name)
}
func (l *Local) RemoveDomain(ctx context.Context, name, domain string) error {
	return l.Svc.RemoveDomain(ctx, l.Caller, name, domain)
}

func (l *Local) SetRestartPolicy(ctx context.Context, name, policy string) (service.VM, error) {
	return l.Svc.SetRestartPolicy(ctx, l.Caller, name, policy)
}

func (l *Local) Events(ctx context.Context, f service.EventFilter) ([]service.Event, error) {
	return l.Svc.Events(ctx, l.Caller, f)
}
