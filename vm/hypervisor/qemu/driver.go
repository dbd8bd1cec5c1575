package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/launch"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/qmp"
	"github.com/minionsdev/minions/vm/jail"
)

// DriverName is Handle.Driver for VMs started by this driver.
const DriverName = "qemu"

// maxSocketPath is the longest usable unix socket path (sun_path minus NUL).
const maxSocketPath = 107

// Driver is the QEMU microvm driver. It is safe for concurrent use on
// different VMs; the caller serialises operations on one VM.
type Driver struct {
	cfg    Config
	binary string // resolved
	accel  string // resolved: kvm or tcg
	vhost  bool   // vhost-vsock instead of virtio-serial + relay
	tscKHz int    // appended under TCG; 0 under KVM
	memDir string // resolved Config.MemoryDir; "": anonymous RAM
	log    *slog.Logger
	// tapExists reports whether a network interface exists in the
	// caller's network namespace.
	tapExists func(name string) bool

	sandboxOnce sync.Once
	sandboxErr  error // why the sandbox is unavailable; nil: available

	children children // QEMUs this process started (crash.go)

	tmplRAMs templateRAMs // sealed template memfds of jailed clones (template_memfd_linux.go)

	goneSwept atomic.Int64 // unix ns of the last sweepGoneInstallations
}

// sandbox reports whether VMs run under QEMU's seccomp sandbox; with
// Config.Sandbox "on" an unavailable sandbox is an error.
func (d *Driver) sandbox() (bool, error) {
	if d.cfg.Sandbox == SandboxOff {
		return false, nil
	}
	d.sandboxOnce.Do(func() {
		probe := d.cfg.ProbeSandbox
		if probe == nil {
			probe = ProbeSandbox
		}
		d.sandboxErr = probe(context.Background(), d.binary)
		if d.sandboxErr != nil && d.cfg.Sandbox == SandboxAuto {
			d.log.Warn("qemu runs without its seccomp sandbox", "err", d.sandboxErr)
		}
	})
	if d.sandboxErr != nil {
		if d.cfg.Sandbox == SandboxOn {
			return false, errs.New(errs.FailedPrecondition, "qemu sandbox required but unavailable: %v", d.sandboxErr)
		}
		return false, nil
	}
	return true, nil
}

func interfaceExists(name string) bool {
	_, err := net.InterfaceByName(name)
	return err == nil
}

var _ hypervisor.Driver = (*Driver)(nil)

// New checks cfg against the host (the QEMU binary, the vhost-vsock device,
// the TSC frequency under TCG) and returns a driver. A missing QEMU binary
// is an errs.FailedPrecondition.
func New(cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	bin, err := exec.LookPath(cfg.Binary)
	if err != nil {
		return nil, errs.New(errs.FailedPrecondition, "qemu driver: binary %q: %w", cfg.Binary, err)
	}
	d := &Driver{cfg: cfg, binary: bin, accel: cfg.accel(), log: cfg.Log.With("component", "qemu"), tapExists: interfaceExists}
	switch cfg.VhostVsock {
	case VsockOn:
		d.vhost = true
	case VsockAuto:
		_, err := os.Stat(cfg.VhostVsockDevice)
		d.vhost = err == nil
	}
	if !d.vhost && len(cfg.RelayCommand) == 0 {
		return nil, errs.New(errs.InvalidArgument, "qemu driver: no %s on this host, so a relay command is required", cfg.VhostVsockDevice)
	}
	d.memDir = d.initMemoryDir()
	if cfg.Jail.On() {
		if err := checkJailHost(); err != nil {
			return nil, fmt.Errorf("qemu driver: %w", err)
		}
	}
	if d.accel == AccelTCG {
		d.tscKHz = cfg.TSCkHz
		if d.tscKHz == 0 {
			if d.tscKHz, err = HostTSCkHz(); err != nil {
				return nil, fmt.Errorf("qemu driver: %w", err)
			}
		}
	}
	return d, nil
}

// Name returns "qemu".
func (d *Driver) Name() string { return DriverName }

// Caps reports KVM when the driver uses it, memory snapshots, and AF_VSOCK
// when vhost-vsock is used. Live resize is not possible on microvm.
func (d *Driver) Caps() hypervisor.Caps {
	return hypervisor.Caps{KVM: d.accel == AccelKVM, MemorySnapshot: true, Vsock: d.vhost}
}

// machineFor validates spec and resolves it into a launch configuration.
func (d *Driver) machineFor(spec hypervisor.Spec) (machine, error) {
	bad := func(format string, args ...any) (machine, error) {
		return machine{}, errs.New(errs.InvalidArgument, format, args...)
	}
	switch {
	case spec.ID == "":
		return bad("spec: empty vm id")
	case spec.CPUs < 1:
		return bad("spec: cpus %d: want at least 1", spec.CPUs)
	case spec.MemoryMiB < 32:
		return bad("spec: memory %d MiB: want at least 32", spec.MemoryMiB)
	case spec.Kernel == "":
		return bad("spec: no kernel")
	case spec.RunDir == "":
		return bad("spec: no run dir")
	case spec.ConsoleLog == "":
		return bad("spec: no console log")
	case len(filepath.Join(spec.RunDir, consoleSock)) > maxSocketPath:
		return bad("spec: run dir %q is too long for unix sockets (max %d bytes with %q)", spec.RunDir, maxSocketPath, consoleSock)
	case d.vhost && spec.VsockCID < 3:
		return bad("spec: vsock cid %d: want at least 3", spec.VsockCID)
	}
	files := []struct{ what, path string }{{"kernel", spec.Kernel}, {"initramfs", spec.Initramfs}}
	for i, disk := range spec.Disks {
		if disk.Format != "qcow2" && disk.Format != "raw" {
			return bad("spec: disk %d: format %q: want qcow2 or raw", i, disk.Format)
		}
		files = append(files, struct{ what, path string }{fmt.Sprintf("disk %d", i), disk.Path})
	}
	for _, f := range files {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return bad("spec: %s: %w", f.what, err)
		}
	}
	if st, err := os.Stat(spec.RunDir); err != nil || !st.IsDir() {
		return bad("spec: run dir %q is not a directory", spec.RunDir)
	}
	if spec.Net != nil {
		if spec.Net.TAP == "" {
			return bad("spec: net: no tap")
		}
		if _, err := net.ParseMAC(spec.Net.MAC); err != nil {
			return bad("spec: net: mac: %w", err)
		}
		// QEMU running as root would create a missing TAP itself,
		// attached to nothing: refuse instead.
		if !d.tapExists(spec.Net.TAP) {
			return machine{}, errs.New(errs.FailedPrecondition, "spec: net: tap %q does not exist", spec.Net.TAP)
		}
	}
	m := machine{
		ID: spec.ID, Name: spec.Name, Accel: d.accel,
		CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		Kernel: spec.Kernel, Initramfs: spec.Initramfs,
		Cmdline: spec.Cmdline,
		Disks:   append([]hypervisor.Disk(nil), spec.Disks...),
		RunDir:  spec.RunDir, ConsoleLog: spec.ConsoleLog,
		VhostVsock: d.vhost,
	}
	m.setRAMPad()
	if len(d.cfg.ConsoleCommand) > 0 {
		m.ConsoleFIFO = m.path(consoleFIFO)
	}
	if d.accel == AccelTCG {
		m.Cmdline = withTSC(spec.Cmdline, d.tscKHz)
	}
	var err error
	if m.Sandbox, err = d.sandbox(); err != nil {
		return machine{}, err
	}
	if spec.Net != nil {
		n := *spec.Net
		m.Net = &n
	}
	if d.vhost {
		m.VsockCID = spec.VsockCID
	}
	if err := d.jailMachine(&m, spec); err != nil {
		return machine{}, err
	}
	return m, nil
}

// Start boots spec. It returns once QEMU reports the guest running and, on
// a host without vhost-vsock, the agent relay listens. On failure it has
// killed what it started and removed its files, in reverse order.
func (d *Driver) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
	m, err := d.machineFor(spec)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	d.ownMemory(&m)
	h, err := d.launch(ctx, m)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	return h, nil
}

// launch runs m as a list of named steps with undo.
func (d *Driver) launch(ctx context.Context, m machine) (*hypervisor.Handle, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	log := d.log.With("vm_id", m.ID)
	var vm, relay, logger *launch.Child
	var files []*os.File   // inherited by a jailed QEMU
	var console []*os.File // inherited by the relay, which logs the console
	defer func() { closeAll(files); closeAll(console) }()
	h := &hypervisor.Handle{Driver: DriverName, APISocket: m.path(qmpSock), RunDir: m.RunDir, UID: m.UID, Cgroup: m.Cgroup}
	steps := []launch.Step{
		{
			// First, so that any failure after it removes the VM's
			// own RAM file, made before launch under the memory dir's
			// lock with its room (makeRAMFile: ownMemory, a fork's or
			// an early copy's, a kept one's copy): memReady. Launch
			// makes none itself.
			Name: "create ram file",
			Do: func(context.Context) error {
				if m.MemOwn && !m.memReady {
					return fmt.Errorf("vm %s: its ram file %s was not made before launch", m.ID, m.MemFile)
				}
				return nil
			},
			Undo: func() {
				if m.MemOwn && !m.deferIncoming { // a copy started early: see StartCopy
					os.Remove(m.MemFile)
				}
			},
		},
		{
			Name: "prepare run dir",
			Do: func(context.Context) error {
				removeRunFiles(m.RunDir)
				b, err := json.MarshalIndent(m, "", "  ")
				if err != nil {
					return err
				}
				return writeFileAtomic(m.path(machineFile), append(b, '\n'))
			},
			Undo: func() { removeRunFiles(m.RunDir) },
		},
	}
	if m.UID > 0 {
		steps = append(steps,
			launch.Step{
				Name: "prepare jail",
				Do: func(context.Context) error {
					var err error
					files, err = d.prepareJail(m)
					return err
				},
			},
			launch.Step{
				Name: "create cgroup",
				Do: func(context.Context) error {
					l, err := d.cfg.Jail.Limits(m.CPUs, m.MemoryMiB)
					if err != nil {
						return err
					}
					return jail.CreateCgroup(m.Cgroup, l)
				},
				Undo: func() {
					if err := d.deleteCgroup(m.Cgroup); err != nil {
						log.Warn("remove cgroup", "cgroup", m.Cgroup, "err", err)
					}
				},
			},
		)
	}
	steps = append(steps, []launch.Step{
		{
			Name: "start console logger",
			Do: func(context.Context) error {
				if m.ConsoleFIFO == "" {
					return nil
				}
				var err error
				if relayLogsConsole(m) {
					// No logger process: the agent relay logs it.
					console, err = makeConsoleFIFO(m)
					return err
				}
				logger, err = d.startConsoleLogger(m)
				return err
			},
			Undo: func() { d.stopChild(context.Background(), logger) },
		},
		{
			Name: "start qemu",
			Do: func(context.Context) error {
				var err error
				if m.UID > 0 {
					if m.ConsoleFIFO != "" {
						if err := shareFIFO(m.ConsoleFIFO, m.UID); err != nil {
							return err
						}
					}
					var plan jail.Plan
					if plan, err = d.qemuPlan(m); err == nil {
						vm, err = d.spawnJailed(plan, m.path(qemuLog), files)
					}
				} else {
					vm, err = launch.Spawn(append([]string{d.binary}, m.args()...), m.RunDir, m.path(qemuLog))
				}
				if err == nil {
					log.Info("qemu started", "pid", vm.PID, "accel", m.Accel, "restore", m.Incoming != "")
					d.watchExit(m.ID, vm)
				}
				return err
			},
			Undo: func() {
				d.children.take(vm.PID, vm.Start)
				d.stopChild(context.Background(), vm)
			},
		},
	}...)
	startRelay := launch.Step{
		Name: "start agent relay",
		Do: func(context.Context) error {
			var err error
			relay, err = d.startRelay(m.RunDir, m.UID, m.Cgroup, console)
			if err == nil {
				log.Debug("agent relay started", "pid", relay.PID)
			}
			return err
		},
		Undo: func() { d.stopChild(context.Background(), relay) },
	}
	// The relay starts right after QEMU, as QEMU initialises (about 0.4 s
	// under TCG before QMP answers on a cold boot) or loads the state it
	// restores (a warm clone's 20 ms of relay start-up then no longer
	// follow the restore): the relay dials QEMU's agent socket until it is
	// there, so its own start-up (exec, jail, runtime) no longer follows
	// QMP's. On a restore its HELLO waits in the socket until the guest
	// runs; QEMU tells the restored guest the port's host side as it is
	// after the load, and a guest that still held the saved session drops
	// it at the first bytes that are not of it and answers the next HELLO
	// (a CONNECT kicks them, relay.session). A live migration's target
	// starts its relay once the migration is set up.
	early := !m.VhostVsock && !m.LiveIncoming
	if early {
		steps = append(steps, startRelay)
	}
	steps = append(steps, launch.Step{
		Name: "connect qmp",
		Do: func(ctx context.Context) error {
			c, err := waitQMP(ctx, vm, m)
			if err != nil {
				return err
			}
			defer c.Close()
			if m.LiveIncoming {
				return prepareLiveIncoming(ctx, c, m)
			}
			if m.Incoming != "" {
				if m.deferIncoming {
					return nil
				}
				return finishIncoming(ctx, vm, m, c)
			}
			st, err := queryStatus(ctx, c)
			if err != nil {
				return err
			}
			if st != "running" {
				return fmt.Errorf("qemu status is %q, want running", st)
			}
			return nil
		},
	})
	if !m.VhostVsock {
		if !early {
			steps = append(steps, startRelay)
		}
		steps = append(steps,
			launch.Step{
				Name: "wait for agent relay",
				Do: func(ctx context.Context) error {
					return waitSocket(ctx, relay, m.path(vsockSock), m.path(relayLog))
				},
			},
		)
	}
	if err := launch.RunSteps(ctx, log, steps); err != nil {
		return nil, err
	}
	h.PID, h.StartTime = vm.PID, vm.Start
	if m.VhostVsock {
		h.Agent = hypervisor.AgentEndpoint{Kind: "vsock", CID: m.VsockCID, Port: AgentPort}
	} else {
		h.Agent = hypervisor.AgentEndpoint{Kind: "hybrid-vsock", Path: m.path(vsockSock), Port: AgentPort}
		h.Helpers = []hypervisor.Process{{Name: "agent-relay", PID: relay.PID, StartTime: relay.Start}}
	}
	if logger != nil {
		h.Helpers = append(h.Helpers, hypervisor.Process{Name: consoleHelper, PID: logger.PID, StartTime: logger.Start})
	}
	return h, nil
}

// waitQMP dials the QMP socket until it answers, QEMU exits or ctx ends.
func waitQMP(ctx context.Context, vm *launch.Child, m machine) (*qmp.Client, error) {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := qmp.Dial(dctx, m.path(qmpSock))
		cancel()
		if err == nil {
			return c, nil
		}
		select {
		case <-vm.Exited:
			return nil, exitedError("qemu", m.path(qemuLog))
		case <-ctx.Done():
			return nil, errs.New(errs.Unavailable, "qmp did not answer: %w (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// migrateFD names the descriptor a memory state travels through (QMP
// getfd, then migrate or migrate-incoming to "fd:<name>").
const migrateFD = "minions-migrate"

// finishIncoming feeds the saved state in m.Incoming to QEMU (started with
// -incoming defer), waits for the incoming migration to end and resumes the
// VM.
func finishIncoming(ctx context.Context, vm *launch.Child, m machine, c *qmp.Client) error {
	f, err := os.Open(m.Incoming)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	ignoreShared := m.incomingIgnoreShared() // template clones and forks: template.go, fork.go
	if ignoreShared {
		if err := setCapIgnoreShared(ctx, c, true); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
	}
	if err := c.SendFile(ctx, migrateFD, f); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := c.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + migrateFD}, nil); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	// The status is asked again every 10 ms and at once on each QMP event
	// (QEMU sends RESUME when the loaded guest starts to run).
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	events := c.Events()
	for {
		st, err := queryStatus(ctx, c)
		if err != nil {
			select {
			case <-vm.Exited:
				return exitedError("qemu", m.path(qemuLog))
			default:
				return err
			}
		}
		switch st {
		case "inmigrate":
		case "running", "paused", "postmigrate", "prelaunch":
			if ignoreShared && m.MemOwn {
				// Its later migrations must carry its RAM (fork.go).
				if err := setCapIgnoreShared(ctx, c, false); err != nil {
					return fmt.Errorf("restore: %w", err)
				}
			}
			if st == "running" {
				return nil
			}
			return c.Execute(ctx, "cont", nil, nil)
		default:
			return fmt.Errorf("restore ended in qemu status %q", st)
		}
		select {
		case <-vm.Exited:
			return exitedError("qemu", m.path(qemuLog))
		case <-ctx.Done():
			return errs.New(errs.Unavailable, "restore: %w", ctx.Err())
		case <-t.C:
		case _, ok := <-events:
			if !ok {
				events = nil // the connection ended: the next query says so
			}
		}
	}
}

func queryStatus(ctx context.Context, c *qmp.Client) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// dial connects to the QMP socket of a live VM.
func (d *Driver) dial(ctx context.Context, h *hypervisor.Handle) (*qmp.Client, error) {
	if err := checkHandle(h); err != nil {
		return nil, err
	}
	if !procfs.Alive(h.PID, h.StartTime) {
		return nil, errs.New(errs.FailedPrecondition, "vm is not running (pid %d gone)", h.PID)
	}
	return qmp.Dial(ctx, h.APISocket)
}

// execute runs one QMP command on a fresh connection, bounded by 10 s
// unless ctx is shorter.
func (d *Driver) execute(ctx context.Context, h *hypervisor.Handle, command string, args, result any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := d.dial(ctx, h)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Execute(ctx, command, args, result)
}

func checkHandle(h *hypervisor.Handle) error {
	if h == nil {
		return errs.New(errs.InvalidArgument, "nil handle")
	}
	if h.Driver != DriverName {
		return errs.New(errs.InvalidArgument, "handle of driver %q given to the qemu driver", h.Driver)
	}
	return nil
}

// Shutdown presses the ACPI power button (QMP system_powerdown), waits up
// to timeout for QEMU to exit, then asks QEMU to quit and finally kills it.
// The helpers are stopped and the run files removed. It is idempotent: on a
// stopped VM it only cleans up. A guest that ignores ACPI (the agent as PID
// 1 without an ACPI handler) is quit by QMP after timeout; callers that want
// a clean guest shutdown ask the agent first.
func (d *Driver) Shutdown(ctx context.Context, h *hypervisor.Handle, timeout time.Duration) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("shutdown vm: %w", err)
	}
	log := d.log.With("pid", h.PID)
	alive := procfs.Alive(h.PID, h.StartTime)
	if alive {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		if err := d.execute(pctx, h, "system_powerdown", nil, nil); err != nil {
			log.Debug("system_powerdown", "err", err)
		}
		err := procfs.WaitGone(pctx, h.PID, h.StartTime, 20*time.Millisecond)
		cancel()
		if err != nil {
			log.Info("guest ignored power button, quitting qemu", "timeout", timeout)
			qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Second)
			if err := d.execute(qctx, h, "quit", nil, nil); err != nil {
				log.Debug("quit", "err", err)
			}
			err = procfs.WaitGone(qctx, h.PID, h.StartTime, 10*time.Millisecond)
			cancel()
			if err != nil {
				if err := d.killWait(ctx, "qemu", h.PID, h.StartTime); err != nil {
					return fmt.Errorf("shutdown vm: %w", err)
				}
			}
		}
	}
	d.forget(h, alive, false)
	if err := d.stopHelpers(ctx, h); err != nil {
		return fmt.Errorf("shutdown vm: %w", err)
	}
	d.removeOwnMemory(h.RunDir)
	removeRunFiles(h.RunDir)
	d.removeCgroup(h)
	return nil
}

// Kill sends SIGKILL to QEMU and its helpers and waits until they are gone
// (at most Config.StopTimeout). It is idempotent and removes the run files.
func (d *Driver) Kill(ctx context.Context, h *hypervisor.Handle) error {
	if err := checkHandle(h); err != nil {
		return fmt.Errorf("kill vm: %w", err)
	}
	alive := procfs.Alive(h.PID, h.StartTime)
	if err := d.killWait(ctx, "qemu", h.PID, h.StartTime); err != nil {
		return fmt.Errorf("kill vm: %w", err)
	}
	d.forget(h, alive, true)
	if err := d.stopHelpers(ctx, h); err != nil {
		return fmt.Errorf("kill vm: %w", err)
	}
	d.removeOwnMemory(h.RunDir)
	removeRunFiles(h.RunDir)
	d.removeCgroup(h)
	return nil
}

// killWait SIGKILLs pid (if it is still the process started at start) and
// waits for it to vanish, even when ctx has ended, for at most StopTimeout.
func (d *Driver) killWait(ctx context.Context, name string, pid int, start uint64) error {
	if _, err := procfs.Signal(pid, start, unix.SIGKILL); err != nil {
		return fmt.Errorf("kill %s: %w", name, err)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.StopTimeout)
	defer cancel()
	if err := procfs.WaitGone(wctx, pid, start, 5*time.Millisecond); err != nil {
		return fmt.Errorf("kill %s: %w", name, err)
	}
	return nil
}

// stopHelpers stops the helper processes: SIGTERM, a short grace, SIGKILL.
func (d *Driver) stopHelpers(ctx context.Context, h *hypervisor.Handle) error {
	var errList []error
	for _, p := range h.Helpers {
		if !procfs.Alive(p.PID, p.StartTime) {
			continue
		}
		_, _ = procfs.Signal(p.PID, p.StartTime, unix.SIGTERM)
		gctx, cancel := context.WithTimeout(ctx, time.Second)
		err := procfs.WaitGone(gctx, p.PID, p.StartTime, 5*time.Millisecond)
		cancel()
		if err != nil {
			errList = append(errList, d.killWait(ctx, p.Name, p.PID, p.StartTime))
		}
	}
	return errors.Join(errList...)
}

// Pause stops the vCPUs (QMP stop). Pausing a paused VM is a no-op; a VM
// whose process is gone is an errs.FailedPrecondition.
func (d *Driver) Pause(ctx context.Context, h *hypervisor.Handle) error {
	if err := d.execute(ctx, h, "stop", nil, nil); err != nil {
		return fmt.Errorf("pause vm: %w", err)
	}
	return nil
}

// Resume restarts the vCPUs (QMP cont). Resuming a running VM is a no-op.
func (d *Driver) Resume(ctx context.Context, h *hypervisor.Handle) error {
	if err := d.execute(ctx, h, "cont", nil, nil); err != nil {
		return fmt.Errorf("resume vm: %w", err)
	}
	return nil
}

// Info queries QEMU. A VM whose process is gone is StateStopped (no error).
// Every QEMU run state other than "running" (paused, inmigrate,
// postmigrate, suspended, guest-panicked, ...) is StatePaused: the vCPUs do
// not run.
func (d *Driver) Info(ctx context.Context, h *hypervisor.Handle) (hypervisor.Info, error) {
	if err := checkHandle(h); err != nil {
		return hypervisor.Info{}, fmt.Errorf("vm info: %w", err)
	}
	if !procfs.Alive(h.PID, h.StartTime) {
		return hypervisor.Info{State: hypervisor.StateStopped}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := d.dial(ctx, h)
	if err != nil {
		if !procfs.Alive(h.PID, h.StartTime) {
			return hypervisor.Info{State: hypervisor.StateStopped}, nil
		}
		return hypervisor.Info{}, fmt.Errorf("vm info: %w", err)
	}
	defer c.Close()
	st, err := queryStatus(ctx, c)
	if err != nil {
		return hypervisor.Info{}, fmt.Errorf("vm info: %w", err)
	}
	var cpus []json.RawMessage
	if err := c.Execute(ctx, "query-cpus-fast", nil, &cpus); err != nil {
		return hypervisor.Info{}, fmt.Errorf("vm info: %w", err)
	}
	var mem struct {
		Base    int64 `json:"base-memory"`
		Plugged int64 `json:"plugged-memory"`
	}
	if err := c.Execute(ctx, "query-memory-size-summary", nil, &mem); err != nil {
		return hypervisor.Info{}, fmt.Errorf("vm info: %w", err)
	}
	return hypervisor.Info{State: runState(st), CPUs: len(cpus), MemoryMiB: int((mem.Base + mem.Plugged) >> 20)}, nil
}

func runState(status string) hypervisor.State {
	switch status {
	case "running":
		return hypervisor.StateRunning
	case "shutdown":
		return hypervisor.StateStopped
	default:
		return hypervisor.StatePaused
	}
}

// Alive reports whether QEMU (PID and start time) still runs; a zombie is
// not alive. Helpers are not considered.
func (d *Driver) Alive(h *hypervisor.Handle) bool {
	return h != nil && procfs.Alive(h.PID, h.StartTime)
}

// Resize is not possible: microvm has no CPU or memory hotplug.
func (d *Driver) Resize(ctx context.Context, h *hypervisor.Handle, cpus, memoryMiB int) error {
	return errs.New(errs.FailedPrecondition,
		"resize vm: qemu microvm has no cpu or memory hotplug; stop the vm and start it with the new size: %w",
		hypervisor.ErrUnsupported)
}
