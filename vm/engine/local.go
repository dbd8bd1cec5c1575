package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/network"
	"github.com/minionsdev/minions/vsockcli"
	"golang.org/x/crypto/ssh"
)

// Config configures a Local engine. Zero fields take the defaults noted.
type Config struct {
	StateDir string // required: disks, snapshots, locks under it
	RunDir   string // sockets and pid files; default StateDir/run

	Subnet  netip.Prefix // VM addresses; default network.DefaultSubnet
	Gateway netip.Addr   // default: first address of Subnet
	DNS     string       // optional nameserver handed to guests

	ReadyTimeout time.Duration // boot to agent ready; default 90s (TCG is slow when loaded)
	StopTimeout  time.Duration // graceful power-off before a kill; default 15s

	// AgentIdle is how long a pooled guest agent connection nobody uses
	// stays open; default 30s. AgentPoolMax bounds the pooled
	// connections (one per running instance at most); default 256.
	AgentIdle    time.Duration
	AgentPoolMax int

	// HostMemory returns the host's memory in bytes (Capacity); default
	// MemTotal (/proc/meminfo).
	HostMemory func() (int64, error)

	// NoWarm turns warm templates off: every create boots from the image
	// and no template is built (see Template).
	NoWarm bool
	// BackgroundWarm lets the engine build templates in the background
	// (after the first cold create of a shape, WarmLater): set it in
	// long-running processes (the daemon), not in a CLI that exits after
	// one command.
	BackgroundWarm bool

	Log *slog.Logger
	// OnOperation, if set, is told how long each durable operation took
	// (create, start, snapshot...) and whether it failed (for metrics).
	OnOperation func(kind string, d time.Duration, err error)
}

// SetDefaults fills the zero fields with the defaults noted on Config
// (the service takes its engine defaults from here too).
func (c *Config) SetDefaults() {
	if c.RunDir == "" && c.StateDir != "" {
		c.RunDir = filepath.Join(c.StateDir, "run")
	}
	if !c.Subnet.IsValid() {
		c.Subnet = network.DefaultSubnet
	}
	if !c.Gateway.IsValid() {
		c.Gateway = c.Subnet.Masked().Addr().Next()
	}
	if c.ReadyTimeout == 0 {
		c.ReadyTimeout = 90 * time.Second
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 15 * time.Second
	}
	if c.AgentIdle == 0 {
		c.AgentIdle = 30 * time.Second
	}
	if c.AgentPoolMax == 0 {
		c.AgentPoolMax = 256
	}
	if c.HostMemory == nil {
		c.HostMemory = MemTotal
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Validate checks the configuration (after defaults).
func (c *Config) Validate() error {
	if c.StateDir == "" {
		return errs.New(errs.InvalidArgument, "state directory is required")
	}
	if !filepath.IsAbs(c.StateDir) || (c.RunDir != "" && !filepath.IsAbs(c.RunDir)) {
		return errs.New(errs.InvalidArgument, "state and run directories must be absolute paths")
	}
	if len(filepath.Join(c.RunDir, "0123456789ab", "console.sock")) > 100 {
		return errs.New(errs.InvalidArgument, "run directory %s is too long for unix sockets", c.RunDir)
	}
	if !c.Subnet.Addr().Is4() || c.Subnet.Bits() > 28 {
		return errs.New(errs.InvalidArgument, "subnet %s must be IPv4 and /28 or larger", c.Subnet)
	}
	if c.AgentIdle < 0 || c.AgentPoolMax < 0 {
		return errs.New(errs.InvalidArgument, "agent pool idle time and size must not be negative")
	}
	return nil
}

// Network is the host networking the engine needs (vm/network).
type Network interface {
	AddPort(ctx context.Context, tap string, ip netip.Addr, mac string) error
	RemovePort(ctx context.Context, tap string) error
}

// Image is a bootable root filesystem from the catalogue.
type Image struct {
	Ref       string // "minimal@20261127-001530-ab12"
	OS        string
	Path      string // raw ext4, never written
	Format    string // "raw"
	SizeBytes int64
	Kernel    string // kernel to boot
	Initramfs string
}

// Images resolves image references (images/).
type Images interface {
	// Resolve finds "os" (newest version) or "os@version"; errs.NotFound
	// names the images that exist.
	Resolve(ctx context.Context, ref string) (Image, error)
}

// Disks makes and changes VM disks (vm/disk).
type Disks interface {
	CreateOverlay(ctx context.Context, base, baseFormat, path string, sizeBytes int64) error
	Clone(ctx context.Context, src, dst string) error
	Grow(ctx context.Context, path string, sizeBytes int64) error
}

// Deps are the subsystems a Local engine drives.
type Deps struct {
	// DB holds the instances, snapshots and operation records (the vms,
	// snapshots and operations tables; on a single host the control
	// plane's own store).
	DB      *store.DB
	Driver  hypervisor.Driver
	Network Network
	Images  Images
	Disks   Disks
	// HostKey is the key the host presents to every guest agent.
	HostKey ssh.Signer
}

// AdmitFunc is the caller's admission policy (quotas, overcommit): it is
// called inside the transaction that claims the resources a describes
// (the new instance's row, a start's operation record, a resize, a
// snapshot's row), so concurrent claims are serialised. An error refuses
// the operation before anything is made.
type AdmitFunc func(ctx context.Context, q store.Q, a Admission) error

// Local is the Engine of this host. See the package doc and Engine.
type Local struct {
	cfg Config
	Deps
	log *slog.Logger

	bg      sync.WaitGroup // background template builds
	warming sync.Map       // template keys being built in the background

	// agents pools the guest agent connections (see agentPool).
	agents *agentPool

	// precopy holds the pre-copies of moves (transfer_memory_precopy.go).
	precopy preCopies

	// reconcileRows are Reconcile's last reads of the store (rows.go).
	reconcileRows reconcileRows

	// swept is when Reconcile last swept (UnixNano; see sweepDue).
	swept atomic.Int64

	// tdisks is what the sweep of dropped templates' disks remembers
	// (template_disks.go).
	tdisks templateDiskSweep

	mu     sync.Mutex
	admit  AdmitFunc
	onExit ExitFunc
}

var _ Engine = (*Local)(nil)

// NewLocal returns the engine of this host.
func NewLocal(cfg Config, deps Deps) (*Local, error) {
	cfg.SetDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.DB == nil || deps.Driver == nil || deps.Network == nil || deps.Images == nil || deps.Disks == nil || deps.HostKey == nil {
		return nil, fmt.Errorf("engine: missing dependency")
	}
	for _, d := range []string{cfg.StateDir, cfg.RunDir, filepath.Join(cfg.StateDir, "vms")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	log := cfg.Log.With("component", "engine")
	return &Local{cfg: cfg, Deps: deps, log: log,
		agents: newAgentPool(vsockcli.Dial, cfg.AgentIdle, cfg.AgentPoolMax, log)}, nil
}

// Close closes the pooled guest agent connections (lent ones on their
// last release). The instances keep running; Agent fails afterwards.
func (l *Local) Close() error {
	l.agents.close()
	return nil
}

// Config returns the effective configuration.
func (l *Local) Config() Config { return l.cfg }

// SetAdmit installs the admission policy (nil admits everything).
func (l *Local) SetAdmit(f AdmitFunc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.admit = f
}

// OnExit implements Engine.
func (l *Local) OnExit(fn ExitFunc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onExit = fn
}

func (l *Local) admitOK(ctx context.Context, q store.Q, a Admission) error {
	l.mu.Lock()
	f := l.admit
	l.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(ctx, q, a)
}

func (l *Local) exited(ctx context.Context, e Exit) {
	l.mu.Lock()
	f := l.onExit
	l.mu.Unlock()
	if f != nil {
		f(ctx, e)
	}
}

func (l *Local) vmDir(id string) string  { return filepath.Join(l.cfg.StateDir, "vms", id) }
func (l *Local) runDir(id string) string { return filepath.Join(l.cfg.RunDir, id) }

// VMDir is the directory of instance id's disk, snapshots and console log.
func (l *Local) VMDir(id string) string { return l.vmDir(id) }

// RunDir is the directory of instance id's sockets and pid files.
func (l *Local) RunDir(id string) string { return l.runDir(id) }

// DiskPath is instance id's disk.
func (l *Local) DiskPath(id string) string { return l.diskPath(id) }

// tapName is the TAP of VM id (IDs from vm.NewID always fit).
func tapName(id string) string {
	name, err := network.TAPName(id)
	if err != nil {
		return "mn-invalid"
	}
	return name
}

// InstanceOf is the engine's view of a store row.
func InstanceOf(v store.VM) Instance {
	out := Instance{ID: v.ID, Name: v.Name, Owner: v.OwnerID, State: vm.State(v.State), Image: v.Image, CPUs: v.CPUs,
		MemoryMiB: v.MemoryMiB, DiskGiB: v.DiskGiB, IP: v.IP, MAC: v.MAC, CreatedAt: v.CreatedAt, Note: v.Note}
	if v.State == vm.Running || v.State == vm.Paused {
		if h, err := DecodeHandle(v.Handle); err == nil && h != nil {
			out.PID = h.PID
		}
		out.StartedAt = v.StartedAt
	}
	return out
}

// load reads instance id: errs.NotFound if it does not exist.
func (l *Local) load(ctx context.Context, id string) (store.VM, error) {
	v, err := store.GetLocalVMByID(ctx, l.DB, id)
	if err != nil {
		return store.VM{}, errs.New(errs.NotFound, "no vm with id %q", id)
	}
	return v, nil
}

// withLock takes instance id's lock, loads it under the lock, reconciles
// it and runs fn.
func (l *Local) withLock(ctx context.Context, id string, fn func(v store.VM) error) error {
	unlock, err := l.lockVM(ctx, id)
	if err != nil {
		return err
	}
	defer unlock()
	v, err := l.load(ctx, id)
	if err != nil {
		return err
	}
	l.reconcileVM(ctx, &v)
	return fn(v)
}

// withOp is withLock plus the state check of vm.Allowed for opName.
func (l *Local) withOp(ctx context.Context, id, opName string, fn func(v store.VM) error) error {
	return l.withLock(ctx, id, func(v store.VM) error {
		if err := vm.Allowed(v.Name, v.State, opName); err != nil {
			return err
		}
		return fn(v)
	})
}

// Get implements Engine.
func (l *Local) Get(ctx context.Context, id string) (Instance, error) {
	v, err := l.load(ctx, id)
	if err != nil {
		return Instance{}, err
	}
	if v.State == vm.Running || v.State == vm.Paused {
		if h, _ := DecodeHandle(v.Handle); h == nil || !l.Driver.Alive(h) {
			if unlock, err := l.tryLock(id); err == nil {
				if cur, err := l.load(ctx, id); err == nil {
					l.reconcileVM(ctx, &cur)
					v = cur
				}
				unlock()
			}
		}
	}
	return InstanceOf(v), nil
}

// List implements Engine.
func (l *Local) List(ctx context.Context) ([]Instance, error) {
	rows, err := store.ListLocalVMs(ctx, l.DB)
	if err != nil {
		return nil, err
	}
	out := make([]Instance, 0, len(rows))
	for _, r := range rows {
		out = append(out, InstanceOf(r))
	}
	return out, nil
}

// Capacity implements Engine.
func (l *Local) Capacity(ctx context.Context) (Capacity, error) {
	caps := l.Driver.Caps()
	out := Capacity{Driver: l.Driver.Name(), KVM: caps.KVM, MemorySnapshot: caps.MemorySnapshot, CPUs: runtime.NumCPU()}
	if total, err := l.cfg.HostMemory(); err == nil {
		out.MemoryMiB = total >> 20
	}
	used, err := store.AllocatedMemoryMiB(ctx, l.DB, "")
	if err != nil {
		return out, err
	}
	out.AllocatedMemoryMiB = used
	if free, err := disk.FreeBytes(l.cfg.StateDir); err == nil {
		out.DiskFreeBytes = free
	}
	rows, err := store.ListLocalVMs(ctx, l.DB)
	if err != nil {
		return out, err
	}
	out.Instances = len(rows)
	return out, nil
}

// DecodeHandle reads a hypervisor handle as the store keeps it (nil for
// "").
func DecodeHandle(s string) (*hypervisor.Handle, error) {
	if s == "" {
		return nil, nil
	}
	var h hypervisor.Handle
	if err := json.Unmarshal([]byte(s), &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// EncodeHandle is the store's form of h ("" for nil).
func EncodeHandle(h *hypervisor.Handle) string {
	if h == nil {
		return ""
	}
	b, _ := json.Marshal(h)
	return string(b)
}
