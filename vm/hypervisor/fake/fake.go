package fake

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// Name is Handle.Driver for fake VMs.
const Name = "fake"

// Op names a Driver operation, for Fail and Calls.
type Op string

// Operations.
const (
	OpStart     Op = "start"
	OpShutdown  Op = "shutdown"
	OpKill      Op = "kill"
	OpPause     Op = "pause"
	OpResume    Op = "resume"
	OpInfo      Op = "info"
	OpSaveState Op = "save_state"
	OpRestore   Op = "restore"
	OpResize    Op = "resize"
)

// SocketName is the socket each fake VM holds in its RunDir.
const SocketName = "fake.sock"

// StateFile is what SaveState writes into its directory.
const StateFile = "fake-state.json"

// firstPID is above the kernel's largest pid_max (2^22), so fake PIDs never
// name real processes.
const firstPID = 1 << 23

// Config configures the fake.
type Config struct {
	// Caps is what Caps reports. LiveResize makes Resize work.
	Caps hypervisor.Caps
	// Helpers names the helper processes each VM gets (Handle.Helpers),
	// as a QEMU VM gets its agent relay: real processes (sleep), killed
	// with the VM, restarted by Repair when they die. None by default;
	// a test that sets it calls Close when it ends.
	Helpers []string
}

// Validate accepts every Config; it exists for symmetry with real drivers.
func (Config) Validate() error { return nil }

// Call is one recorded operation.
type Call struct {
	Op  Op
	PID int // 0 for Start and Restore that failed
	Err error
}

// Driver is the fake. It is safe for concurrent use.
type Driver struct {
	cfg Config

	mu      sync.Mutex
	nextPID int
	vms     map[int]*vm
	fail    map[Op]*failure
	calls   []Call
	helpers []hypervisor.Process // every helper started (Close)
}

type vm struct {
	start  uint64
	spec   hypervisor.Spec
	state  hypervisor.State
	ln     net.Listener
	cpus   int
	memory int
}

type failure struct {
	err   error
	times int // < 0: forever
}

var _ hypervisor.Driver = (*Driver)(nil)

// New returns an empty fake.
func New(cfg Config) *Driver {
	return &Driver{cfg: cfg, nextPID: firstPID, vms: map[int]*vm{}, fail: map[Op]*failure{}}
}

// Fail makes the next times calls of op fail with err (times < 0: until
// Fail is called again with times 0). A failing Start or Restore leaves
// nothing behind, as the contract demands.
func (d *Driver) Fail(op Op, err error, times int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if times == 0 {
		delete(d.fail, op)
		return
	}
	d.fail[op] = &failure{err: err, times: times}
}

// Crash makes the VM's process disappear as if it died (or the guest
// powered off): Alive turns false and Info reports stopped. Its socket
// stays until Shutdown or Kill, as a dead process's socket file would.
func (d *Driver) Crash(h *hypervisor.Handle) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v := d.lookup(h); v != nil {
		v.ln.(*net.UnixListener).SetUnlinkOnClose(false)
		v.ln.Close()
		delete(d.vms, h.PID)
	}
}

// Calls returns the operations recorded so far.
func (d *Driver) Calls() []Call {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]Call(nil), d.calls...)
}

// Running returns how many fake VMs exist.
func (d *Driver) Running() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.vms)
}

// Name returns "fake".
func (d *Driver) Name() string { return Name }

// Caps returns Config.Caps.
func (d *Driver) Caps() hypervisor.Caps { return d.cfg.Caps }

// injected returns the injected failure for op, consuming one. Call with
// d.mu held.
func (d *Driver) injected(op Op) error {
	f := d.fail[op]
	if f == nil {
		return nil
	}
	if f.times > 0 {
		f.times--
		if f.times == 0 {
			delete(d.fail, op)
		}
	}
	return fmt.Errorf("fake %s: %w", op, f.err)
}

func (d *Driver) record(op Op, pid int, err error) error {
	d.calls = append(d.calls, Call{Op: op, PID: pid, Err: err})
	return err
}

func (d *Driver) lookup(h *hypervisor.Handle) *vm {
	if h == nil {
		return nil
	}
	v := d.vms[h.PID]
	if v == nil || v.start != h.StartTime {
		return nil
	}
	return v
}

// Start validates spec (a non-empty Kernel, Initramfs or disk path must
// exist; RunDir must be a directory) and creates a running VM.
func (d *Driver) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	h, err := d.start(spec, "")
	if err != nil {
		err = fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	return h, d.record(OpStart, pidOf(h), err)
}

func pidOf(h *hypervisor.Handle) int {
	if h == nil {
		return 0
	}
	return h.PID
}

func (d *Driver) start(spec hypervisor.Spec, op Op) (*hypervisor.Handle, error) {
	if op == "" {
		op = OpStart
	}
	if err := d.injected(op); err != nil {
		return nil, err
	}
	if spec.ID == "" || spec.CPUs < 1 || spec.MemoryMiB < 1 {
		return nil, errs.New(errs.InvalidArgument, "spec: id, cpus and memory are required")
	}
	paths := []string{spec.Kernel, spec.Initramfs}
	for _, disk := range spec.Disks {
		paths = append(paths, disk.Path)
	}
	for _, p := range paths {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			return nil, errs.New(errs.InvalidArgument, "spec: %w", err)
		}
	}
	if st, err := os.Stat(spec.RunDir); err != nil || !st.IsDir() {
		return nil, errs.New(errs.InvalidArgument, "spec: run dir %q is not a directory", spec.RunDir)
	}
	sock := filepath.Join(spec.RunDir, SocketName)
	_ = os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	helpers, err := d.spawnHelpers()
	if err != nil {
		ln.Close()
		return nil, err
	}
	d.nextPID++
	pid := d.nextPID
	v := &vm{start: uint64(time.Now().UnixNano()), spec: spec, state: hypervisor.StateRunning, ln: ln, cpus: spec.CPUs, memory: spec.MemoryMiB}
	d.vms[pid] = v
	return &hypervisor.Handle{
		Driver: Name, PID: pid, StartTime: v.start, APISocket: sock, RunDir: spec.RunDir,
		Agent:   hypervisor.AgentEndpoint{Kind: "hybrid-vsock", Path: sock, Port: 1024},
		Helpers: helpers,
	}, nil
}

// stop removes the VM and its socket. Call with d.mu held.
func (d *Driver) stop(h *hypervisor.Handle) {
	if v := d.lookup(h); v != nil {
		v.ln.Close()
		delete(d.vms, h.PID)
	}
	if h != nil {
		stopHelpers(h.Helpers)
	}
	if h != nil && h.RunDir != "" {
		_ = os.Remove(filepath.Join(h.RunDir, SocketName))
	}
}

// Shutdown stops the VM; it is idempotent.
func (d *Driver) Shutdown(ctx context.Context, h *hypervisor.Handle, timeout time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.injected(OpShutdown); err != nil {
		return d.record(OpShutdown, pidOf(h), err)
	}
	d.stop(h)
	return d.record(OpShutdown, pidOf(h), nil)
}

// Kill stops the VM; it is idempotent.
func (d *Driver) Kill(ctx context.Context, h *hypervisor.Handle) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.injected(OpKill); err != nil {
		return d.record(OpKill, pidOf(h), err)
	}
	d.stop(h)
	return d.record(OpKill, pidOf(h), nil)
}

func (d *Driver) setState(op Op, h *hypervisor.Handle, st hypervisor.State) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.injected(op); err != nil {
		return d.record(op, pidOf(h), err)
	}
	v := d.lookup(h)
	if v == nil {
		return d.record(op, pidOf(h), errs.New(errs.FailedPrecondition, "%s vm: not running", op))
	}
	v.state = st
	return d.record(op, pidOf(h), nil)
}

// Pause pauses a live VM (idempotent); a gone VM is FailedPrecondition.
func (d *Driver) Pause(ctx context.Context, h *hypervisor.Handle) error {
	return d.setState(OpPause, h, hypervisor.StatePaused)
}

// Resume resumes a live VM (idempotent); a gone VM is FailedPrecondition.
func (d *Driver) Resume(ctx context.Context, h *hypervisor.Handle) error {
	return d.setState(OpResume, h, hypervisor.StateRunning)
}

// Info reports the VM's state; a gone VM is StateStopped.
func (d *Driver) Info(ctx context.Context, h *hypervisor.Handle) (hypervisor.Info, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.injected(OpInfo); err != nil {
		return hypervisor.Info{}, d.record(OpInfo, pidOf(h), err)
	}
	v := d.lookup(h)
	d.record(OpInfo, pidOf(h), nil)
	if v == nil {
		return hypervisor.Info{State: hypervisor.StateStopped}, nil
	}
	return hypervisor.Info{State: v.state, CPUs: v.cpus, MemoryMiB: v.memory}, nil
}

// Alive reports whether the VM exists.
func (d *Driver) Alive(h *hypervisor.Handle) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lookup(h) != nil
}

type savedState struct {
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	Disks     int    `json:"disks"`
	ID        string `json:"id"`
}

// SaveState pauses the VM and writes dir/fake-state.json.
func (d *Driver) SaveState(ctx context.Context, h *hypervisor.Handle, dir string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.injected(OpSaveState); err != nil {
		return d.record(OpSaveState, pidOf(h), err)
	}
	v := d.lookup(h)
	if v == nil {
		return d.record(OpSaveState, pidOf(h), errs.New(errs.FailedPrecondition, "save vm state: not running"))
	}
	v.state = hypervisor.StatePaused
	b, _ := json.Marshal(savedState{CPUs: v.cpus, MemoryMiB: v.memory, Disks: len(v.spec.Disks), ID: v.spec.ID})
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return d.record(OpSaveState, pidOf(h), err)
	}
	return d.record(OpSaveState, pidOf(h), os.WriteFile(filepath.Join(dir, StateFile), b, 0o600))
}

// Restore starts a running VM from dir; the spec's CPUs, memory and disk
// count must match the saved ones.
func (d *Driver) Restore(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	h, err := d.restore(spec, dir)
	if err != nil {
		err = fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	return h, d.record(OpRestore, pidOf(h), err)
}

var _ hypervisor.Forker = (*Driver)(nil)

// SaveCopy is SaveState (recorded as OpSaveState).
func (d *Driver) SaveCopy(ctx context.Context, h *hypervisor.Handle, dir string) error {
	return d.SaveState(ctx, h, dir)
}

// RestoreCopy starts another running VM from dir (a fork); it is Restore
// (the fake keeps no MAC or CID in its state), recorded as OpRestore.
func (d *Driver) RestoreCopy(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	return d.Restore(ctx, spec, dir)
}

func (d *Driver) restore(spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	b, err := os.ReadFile(filepath.Join(dir, StateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errs.New(errs.NotFound, "no saved state in %s", dir)
	}
	if err != nil {
		return nil, err
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, err
	}
	if st.CPUs != spec.CPUs || st.MemoryMiB != spec.MemoryMiB || st.Disks != len(spec.Disks) {
		return nil, errs.New(errs.FailedPrecondition, "saved state (%d cpus, %d MiB, %d disks) does not fit the spec", st.CPUs, st.MemoryMiB, st.Disks)
	}
	return d.start(spec, OpRestore)
}

// Resize changes the VM's size when Config.Caps.LiveResize is set, else it
// returns hypervisor.ErrUnsupported.
func (d *Driver) Resize(ctx context.Context, h *hypervisor.Handle, cpus, memoryMiB int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.injected(OpResize); err != nil {
		return d.record(OpResize, pidOf(h), err)
	}
	if !d.cfg.Caps.LiveResize {
		return d.record(OpResize, pidOf(h), fmt.Errorf("resize vm: %w", hypervisor.ErrUnsupported))
	}
	v := d.lookup(h)
	if v == nil {
		return d.record(OpResize, pidOf(h), errs.New(errs.FailedPrecondition, "resize vm: not running"))
	}
	if cpus < 1 || memoryMiB < 1 {
		return d.record(OpResize, pidOf(h), errs.New(errs.InvalidArgument, "resize vm: %d cpus, %d MiB", cpus, memoryMiB))
	}
	v.cpus, v.memory = cpus, memoryMiB
	return d.record(OpResize, pidOf(h), nil)
}
