package service

import (
	"context"
	"io"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vsockcli"
)

// Bound is the service bound to one caller: the in-process Backend. Get
// one with Service.As; it is a small value, safe for concurrent use.
type Bound struct {
	s          *Service
	c          Caller
	sessionKey ssh.PublicKey
	onClose    func() error
}

var _ Backend = (*Bound)(nil)

// As returns the service acting as c. Frontends bind the caller once and
// pass the Backend around instead of threading c through every call.
func (s *Service) As(c Caller) *Bound { return &Bound{s: s, c: c} }

// WithSessionKey returns a copy of b that knows the SSH key its session
// authenticated with (the SSH gateway sets it): AddSessionKey registers it,
// the session being the proof of possession.
func (b *Bound) WithSessionKey(k ssh.PublicKey) *Bound {
	nb := *b
	nb.sessionKey = k
	return &nb
}

// OnClose returns a copy of b whose Close runs f (the CLI closes the
// database it opened).
func (b *Bound) OnClose(f func() error) *Bound {
	nb := *b
	nb.onClose = f
	return &nb
}

// Service is the service b is bound to (for the composition root's
// host-only commands).
func (b *Bound) Service() *Service { return b.s }

func (b *Bound) Whoami(context.Context) (Caller, error) { return b.c, nil }

func (b *Bound) Close() error {
	if b.onClose != nil {
		return b.onClose()
	}
	return nil
}

// VMs.

func (b *Bound) Create(ctx context.Context, req CreateRequest, p Progress) (VM, error) {
	return b.s.Create(ctx, b.c, req, p)
}
func (b *Bound) List(ctx context.Context) ([]VM, error) { return b.s.List(ctx, b.c) }
func (b *Bound) Get(ctx context.Context, name string) (VM, error) {
	return b.s.Get(ctx, b.c, name)
}
func (b *Bound) Start(ctx context.Context, name string, p Progress) (VM, error) {
	return b.s.Start(ctx, b.c, name, p)
}
func (b *Bound) Stop(ctx context.Context, name string) (VM, error) {
	return b.s.Stop(ctx, b.c, name)
}
func (b *Bound) Restart(ctx context.Context, name string, p Progress) (VM, error) {
	return b.s.Restart(ctx, b.c, name, p)
}
func (b *Bound) Destroy(ctx context.Context, name string) error {
	return b.s.Destroy(ctx, b.c, name)
}
func (b *Bound) Resize(ctx context.Context, name string, req ResizeRequest) (VM, error) {
	return b.s.Resize(ctx, b.c, name, req)
}
func (b *Bound) Rename(ctx context.Context, name, newName string) (VM, error) {
	return b.s.Rename(ctx, b.c, name, newName)
}
func (b *Bound) Copy(ctx context.Context, name string, req CopyRequest, p Progress) (VM, error) {
	return b.s.Copy(ctx, b.c, name, req, p)
}

// Guest streams.

func (b *Bound) Exec(ctx context.Context, name string, req ExecRequest) (int, error) {
	return b.s.Exec(ctx, b.c, name, req)
}
func (b *Bound) Status(ctx context.Context, name string) (GuestStatus, error) {
	return b.s.AgentStatus(ctx, b.c, name)
}
func (b *Bound) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	return b.s.CopyConsole(ctx, b.c, name, follow, w)
}

func (b *Bound) Forward(ctx context.Context, name string, port int) (io.ReadWriteCloser, error) {
	return b.s.Forward(ctx, b.c, name, port)
}

// Agent connects to VM name's guest agent (the host-only `vsock`
// debugging command and the gateway's relay; frontends use Exec).
func (b *Bound) Agent(ctx context.Context, name string) (*vsockcli.Client, error) {
	return b.s.agentClient(ctx, b.c, name)
}

// Snapshots.

func (b *Bound) CreateSnapshot(ctx context.Context, name string, req SnapshotRequest, p Progress) (Snapshot, error) {
	return b.s.CreateSnapshot(ctx, b.c, name, req, p)
}
func (b *Bound) ListSnapshots(ctx context.Context, name string) ([]Snapshot, error) {
	return b.s.ListSnapshots(ctx, b.c, name)
}
func (b *Bound) RestoreSnapshot(ctx context.Context, name, snap string, p Progress) (VM, error) {
	return b.s.RestoreSnapshot(ctx, b.c, name, snap, p)
}
func (b *Bound) DeleteSnapshot(ctx context.Context, name, snap string) error {
	return b.s.DeleteSnapshot(ctx, b.c, name, snap)
}

// SSH keys.

func (b *Bound) SSHKeyChallenge(ctx context.Context) (KeyChallenge, error) {
	return b.s.SSHKeyChallenge(ctx, b.c)
}
func (b *Bound) AddSSHKey(ctx context.Context, p KeyProof) (SSHKey, error) {
	return b.s.AddSSHKey(ctx, b.c, p)
}

// AddSessionKey registers the key b's SSH session authenticated with
// (errs.FailedPrecondition without one: see WithSessionKey).
func (b *Bound) AddSessionKey(ctx context.Context) (SSHKey, error) {
	if b.sessionKey == nil {
		return SSHKey{}, errs.New(errs.FailedPrecondition, "this session did not log in with an ssh key")
	}
	return b.s.AddSessionKey(ctx, b.c, b.sessionKey)
}
func (b *Bound) ListSSHKeys(ctx context.Context) ([]SSHKey, error) {
	return b.s.ListSSHKeys(ctx, b.c)
}
func (b *Bound) RemoveSSHKey(ctx context.Context, id string) error {
	return b.s.RemoveSSHKey(ctx, b.c, id)
}

// Web.

func (b *Bound) Expose(ctx context.Context, name string, port int) (WebInfo, error) {
	return b.s.Expose(ctx, b.c, name, port)
}
func (b *Bound) Share(ctx context.Context, name string, req ShareRequest) (WebInfo, error) {
	return b.s.Share(ctx, b.c, name, req)
}
func (b *Bound) AddDomain(ctx context.Context, name, domain string) (Domain, error) {
	return b.s.AddDomain(ctx, b.c, name, domain)
}
func (b *Bound) VerifyDomain(ctx context.Context, name, domain string) (Domain, error) {
	return b.s.VerifyDomain(ctx, b.c, name, domain)
}
func (b *Bound) ListDomains(ctx context.Context, name string) ([]Domain, error) {
	return b.s.ListDomains(ctx, b.c, name)
}
func (b *Bound) RemoveDomain(ctx context.Context, name, domain string) error {
	return b.s.RemoveDomain(ctx, b.c, name, domain)
}

// Images.

func (b *Bound) ListImages(ctx context.Context) ([]ImageInfo, error) {
	return b.s.ListImages(ctx, b.c)
}
func (b *Bound) DefaultImage(ctx context.Context) (ImageDefault, error) {
	return b.s.DefaultImageInfo(ctx, b.c)
}
func (b *Bound) SetDefaultImage(ctx context.Context, ref string) (ImageDefault, error) {
	return b.s.SetDefaultImage(ctx, b.c, ref)
}
func (b *Bound) BuildImage(ctx context.Context, req ImageBuildRequest, p Progress) (ImageInfo, error) {
	return b.s.BuildImage(ctx, b.c, req, p)
}
func (b *Bound) RemoveImage(ctx context.Context, ref string) ([]ImageInfo, error) {
	return b.s.RemoveImage(ctx, b.c, ref)
}

// Ops.

func (b *Bound) SetRestartPolicy(ctx context.Context, name, policy string) (VM, error) {
	return b.s.SetRestartPolicy(ctx, b.c, name, policy)
}
func (b *Bound) Events(ctx context.Context, f EventFilter) ([]Event, error) {
	return b.s.Events(ctx, b.c, f)
}

// Admin.

func (b *Bound) AddUser(ctx context.Context, name string, admin bool, sshKey KeyProof) (User, error) {
	return b.s.AddUser(ctx, b.c, name, admin, sshKey)
}
func (b *Bound) ListUsers(ctx context.Context) ([]User, error) { return b.s.ListUsers(ctx, b.c) }
func (b *Bound) RemoveUser(ctx context.Context, name string) error {
	return b.s.RemoveUser(ctx, b.c, name)
}
func (b *Bound) SetQuota(ctx context.Context, name string, q Quota) (User, error) {
	return b.s.SetQuota(ctx, b.c, name, q)
}
func (b *Bound) CreateToken(ctx context.Context, user, name string, expires time.Duration) (NewToken, error) {
	return b.s.CreateToken(ctx, b.c, user, name, expires)
}
func (b *Bound) ListTokens(ctx context.Context, user string) ([]Token, error) {
	return b.s.ListTokens(ctx, b.c, user)
}
func (b *Bound) RevokeToken(ctx context.Context, id string) error {
	return b.s.RevokeToken(ctx, b.c, id)
}

func (b *Bound) HostAdd(ctx context.Context, name string) (HostInvite, error) {
	return b.s.HostAdd(ctx, b.c, name)
}
func (b *Bound) HostList(ctx context.Context) ([]Host, error) { return b.s.HostList(ctx, b.c) }
func (b *Bound) HostStatus(ctx context.Context, name string) (Host, error) {
	return b.s.HostStatus(ctx, b.c, name)
}
func (b *Bound) HostCordon(ctx context.Context, name string) (Host, error) {
	return b.s.HostCordon(ctx, b.c, name)
}
func (b *Bound) HostUncordon(ctx context.Context, name string) (Host, error) {
	return b.s.HostUncordon(ctx, b.c, name)
}
func (b *Bound) HostRemove(ctx context.Context, name string) error {
	return b.s.HostRemove(ctx, b.c, name)
}
