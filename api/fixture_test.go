package api_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"

	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
	"github.com/minionsdev/minions/vm/hypervisor/fake/fakeagent"
)

// The client is a complete frontend backend.
var _ service.Backend = (*api.Client)(nil)

const adminToken = "admin-token-from-the-config-0123"

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func authorizedKey(t testing.TB) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(newSigner(t).PublicKey())))
}

// proveKey signs a fresh challenge of be (a service bound to a caller, or
// a client) with signer; comment is appended to the key line.
func proveKey(t testing.TB, be interface {
	SSHKeyChallenge(context.Context) (service.KeyChallenge, error)
}, signer ssh.Signer, comment string) service.KeyProof {
	t.Helper()
	ch, err := be.SSHKeyChallenge(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	if comment != "" {
		line += " " + comment
	}
	p, err := service.SignKeyProof(ch, signer, line)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// callerBackend binds a service to a caller for proveKey.
type callerBackend struct {
	svc *service.Service
	c   service.Caller
}

func (b callerBackend) SSHKeyChallenge(ctx context.Context) (service.KeyChallenge, error) {
	return b.svc.SSHKeyChallenge(ctx, b.c)
}

// agentDriver is the fake hypervisor with a real guest agent: every VM it
// starts gets an in-process guestagent server on a hybrid-vsock socket, so
// create, exec, status, snapshots and copies run their real agent paths.
type agentDriver struct {
	*fake.Driver
	srv *guestagent.Server

	mu  sync.Mutex
	lns map[int]net.Listener
}

func (d *agentDriver) serve(h *hypervisor.Handle) (*hypervisor.Handle, error) {
	sock := filepath.Join(h.RunDir, "agent.sock")
	ln, err := fakeagent.ServeAgent(sock, d.srv, nil)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.lns[h.PID] = ln
	d.mu.Unlock()
	h.Agent = hypervisor.AgentEndpoint{Kind: "hybrid-vsock", Path: sock, Port: 1024}
	return h, nil
}

func (d *agentDriver) unserve(h *hypervisor.Handle) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h != nil && d.lns[h.PID] != nil {
		d.lns[h.PID].Close()
		delete(d.lns, h.PID)
	}
}

func (d *agentDriver) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
	h, err := d.Driver.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	return d.serve(h)
}

func (d *agentDriver) Restore(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	h, err := d.Driver.Restore(ctx, spec, dir)
	if err != nil {
		return nil, err
	}
	return d.serve(h)
}

// RestoreCopy starts a fork with the (shared) agent, like Restore.
func (d *agentDriver) RestoreCopy(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	h, err := d.Driver.RestoreCopy(ctx, spec, dir)
	if err != nil {
		return nil, err
	}
	return d.serve(h)
}

func (d *agentDriver) Shutdown(ctx context.Context, h *hypervisor.Handle, timeout time.Duration) error {
	d.unserve(h)
	return d.Driver.Shutdown(ctx, h, timeout)
}

func (d *agentDriver) Kill(ctx context.Context, h *hypervisor.Handle) error {
	d.unserve(h)
	return d.Driver.Kill(ctx, h)
}

type testNetwork struct {
	mu    sync.Mutex
	ports map[string]netip.Addr
}

func (n *testNetwork) AddPort(_ context.Context, tap string, ip netip.Addr, _ string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.ports[tap] = ip
	return nil
}

func (n *testNetwork) RemovePort(_ context.Context, tap string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.ports, tap)
	return nil
}

// testImages serves one small raw image with a stand-in kernel file, and
// a catalogue (service.ImageCatalog) listing it and a Debian version.
type testImages struct {
	img  service.Image
	mu   sync.Mutex
	list []service.ImageInfo
}

func newTestImages(img service.Image) *testImages {
	return &testImages{img: img, list: []service.ImageInfo{
		{Ref: "debian@20261201-000000-dddd", OS: "debian", Version: "20261201-000000-dddd", SizeBytes: 3 << 30},
		{Ref: img.Ref, OS: img.OS, Version: "1", SizeBytes: img.SizeBytes},
	}}
}

func (i *testImages) Resolve(_ context.Context, ref string) (service.Image, error) {
	if ref != "minimal" && ref != i.img.Ref {
		return service.Image{}, fmt.Errorf("no image %q", ref)
	}
	return i.img, nil
}

func (i *testImages) ListImages(context.Context) ([]service.ImageInfo, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	return append([]service.ImageInfo(nil), i.list...), nil
}

// BuildImage adds a version at once (a real build is images/' business).
func (i *testImages) BuildImage(_ context.Context, req service.ImageBuildRequest, p service.Progress) (service.ImageInfo, error) {
	if p != nil {
		p("rootfs")
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	v := fmt.Sprintf("20261202-000000-%04d", len(i.list))
	im := service.ImageInfo{Ref: req.OS + "@" + v, OS: req.OS, Version: v}
	i.list = append(i.list, im)
	return im, nil
}

func (i *testImages) RemoveImage(_ context.Context, ref string, inUse func(string) bool) ([]service.ImageInfo, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	var keep, gone []service.ImageInfo
	for _, im := range i.list {
		if im.Ref == ref || im.OS == ref {
			if inUse(im.Ref) {
				return nil, errs.New(errs.FailedPrecondition, "image %s in use", im.Ref)
			}
			gone = append(gone, im)
		} else {
			keep = append(keep, im)
		}
	}
	if len(gone) == 0 {
		return nil, errs.New(errs.NotFound, "no image %s", ref)
	}
	i.list = keep
	return gone, nil
}

// realDisks is vm/disk: qcow2 overlays made by qemu-img.
type realDisks struct{}

func (realDisks) CreateOverlay(ctx context.Context, base, format, path string, size int64) error {
	return disk.CreateOverlay(ctx, base, format, path, size)
}
func (realDisks) Clone(ctx context.Context, src, dst string) error {
	_, err := disk.Clone(ctx, src, dst)
	return err
}
func (realDisks) Grow(ctx context.Context, path string, size int64) error {
	return disk.Grow(ctx, path, size)
}

// fixture is a real service (SQLite, qcow2 disks, guest agent) on the fake
// hypervisor, served by the API on TCP and on a unix socket.
type fixture struct {
	t       testing.TB
	dir     string
	svc     *service.Service
	db      *store.DB
	drv     *agentDriver
	url     string // TCP base URL
	sock    string // unix socket path
	tokens  map[string]string
	callers map[string]service.Caller
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root (the guest agent runs commands as users)")
	}
	dir, err := os.MkdirTemp("/tmp", "apit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })

	// The guest: an agent whose root is a directory here.
	root := filepath.Join(dir, "guest")
	home := filepath.Join(root, "root")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(home, 0o700)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:"+home+":/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	hostKey := newSigner(t)
	srv, err := guestagent.NewServer(guestagent.Config{
		AuthorizedKey: hostKey.PublicKey(),
		HostKeyPath:   filepath.Join(root, "etc/minions/agent_host_key"),
		Root:          root,
		Mounts:        func() ([]guestagent.Mount, error) { return []guestagent.Mount{}, nil },
		GrowMount:     root,
		SetHostname:   func(string) error { return nil },
		SetTime:       func(time.Time) error { return nil },
		Power:         func(bool) error { return nil },
		ReseedRNG:     func([]byte) error { return nil },
		SetNetwork:    func(net.HardwareAddr, netip.Prefix, netip.Addr) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	drv := &agentDriver{Driver: fake.New(fake.Config{Caps: hypervisor.Caps{MemorySnapshot: true}}), srv: srv, lns: map[int]net.Listener{}}

	base := filepath.Join(dir, "base.raw")
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(base)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.Close()
	img := service.Image{Ref: "minimal@1", OS: "minimal", Path: base, Format: "raw", SizeBytes: 64 << 20, Kernel: kernel}

	svc, err := service.New(service.Config{StateDir: dir, RunDir: filepath.Join(dir, "run"), ReadyTimeout: 20 * time.Second,
		StopTimeout: time.Second, Log: slog.New(slog.DiscardHandler)},
		service.Deps{DB: db, Driver: drv, Network: &testNetwork{ports: map[string]netip.Addr{}}, Images: newTestImages(img), Disks: realDisks{}, HostKey: hostKey})
	if err != nil {
		t.Fatal(err)
	}
	h := api.NewHandler(api.Config{Service: svc, AdminTokens: []string{adminToken}})

	ts := httptest.NewUnstartedServer(h)
	ts.Config.ConnContext = api.ConnContext
	ts.Start()
	t.Cleanup(ts.Close)

	sock := filepath.Join(dir, api.SocketName)
	ln, err := api.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	us := api.NewServer(h)
	go us.Serve(ln)
	t.Cleanup(func() { us.Close() })

	fx := &fixture{t: t, dir: dir, svc: svc, db: db, drv: drv, url: ts.URL, sock: sock,
		tokens: map[string]string{"admin": adminToken}, callers: map[string]service.Caller{}}
	rootC, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	fx.callers["admin"] = rootC
	for _, u := range []struct{ role, name string }{{"owner", "alice"}, {"other", "bob"}} {
		if _, err := svc.AddUser(ctx, rootC, u.name, false, service.KeyProof{}); err != nil {
			t.Fatal(err)
		}
		tok, err := svc.CreateToken(ctx, rootC, u.name, "test", 0)
		if err != nil {
			t.Fatal(err)
		}
		fx.tokens[u.role] = tok.Secret
		c, err := svc.AuthenticateToken(ctx, tok.Secret)
		if err != nil {
			t.Fatal(err)
		}
		fx.callers[u.role] = c
	}
	return fx
}

// client returns an API client over TCP for a role ("anon": no token).
func (fx *fixture) client(role string) *api.Client {
	c, err := api.NewClient(fx.url, fx.tokens[role])
	if err != nil {
		fx.t.Fatal(err)
	}
	fx.t.Cleanup(func() { c.Close() })
	return c
}
