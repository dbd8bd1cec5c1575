package cloudhypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/launch"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

// Name is the driver name, also recorded in every Handle.
const Name = "cloud-hypervisor"

// File names in a VM's RunDir.
const (
	apiSocketName   = "ch.sock"
	vsockSocketName = "vsock.sock"
	vmmLogName      = "vmm.log"
)

// maxSocketPath is the longest usable unix socket path (sun_path is 108
// bytes with the terminating NUL). Cloud Hypervisor appends "_<port>" to the
// vsock socket for guest-initiated connections, hence the margin.
const maxSocketPath = 107 - len("_4294967295")

// Driver runs VMs under Cloud Hypervisor. It is safe for concurrent use on
// different VMs.
type Driver struct {
	cfg Config
	log *slog.Logger
}

var _ hypervisor.Driver = (*Driver)(nil)

// New returns a driver; cfg is validated.
func New(cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Driver{cfg: cfg, log: cfg.Log.With("component", Name)}, nil
}

// Name returns "cloud-hypervisor".
func (d *Driver) Name() string { return Name }

// Caps: Cloud Hypervisor always runs on KVM, resizes live, snapshots
// memory, and gives the guest a real AF_VSOCK device (the host side is the
// hybrid unix socket, no relay process).
func (d *Driver) Caps() hypervisor.Caps {
	return hypervisor.Caps{KVM: true, LiveResize: true, MemorySnapshot: true, Vsock: true}
}

// DiskID is the id the driver gives spec.Disks[i] in the VM (for
// ResizeDisk).
func DiskID(i int) string { return fmt.Sprintf("disk%d", i) }

// netID is the id of the VM's network device.
const netID = "net0"

// BuildVMConfig returns the vm.create body for spec under cfg. It is pure.
func BuildVMConfig(cfg Config, spec hypervisor.Spec) VMConfig {
	cfg = cfg.withDefaults()
	vc := VMConfig{
		Payload: PayloadConfig{Kernel: spec.Kernel, Cmdline: spec.Cmdline, Initramfs: spec.Initramfs},
		CPUs:    &CPUsConfig{BootVCPUs: spec.CPUs, MaxVCPUs: cfg.maxVCPUs(spec.CPUs)},
		Memory:  &MemoryConfig{Size: int64(spec.MemoryMiB) << 20},
		RNG:     &RNGConfig{Src: cfg.RNGSource},
		Serial:  &ConsoleConfig{Mode: "Off"},
		Console: &ConsoleConfig{Mode: "Off"},
		Vsock:   &VsockConfig{CID: int64(spec.VsockCID), Socket: filepath.Join(spec.RunDir, vsockSocketName)},
	}
	if cfg.MemoryHotplugMiB > 0 {
		vc.Memory.HotplugSize = int64(cfg.MemoryHotplugMiB) << 20
	}
	if spec.ConsoleLog != "" {
		vc.Serial = &ConsoleConfig{Mode: "File", File: spec.ConsoleLog}
	}
	for i, disk := range spec.Disks {
		dc := DiskConfig{ID: DiskID(i), Path: disk.Path, Readonly: disk.ReadOnly}
		switch disk.Format {
		case "qcow2":
			dc.ImageType, dc.BackingFiles = "Qcow2", true
		case "raw":
			dc.ImageType = "Raw"
		}
		vc.Disks = append(vc.Disks, dc)
	}
	if spec.Net != nil {
		vc.Net = []NetConfig{{ID: netID, TAP: spec.Net.TAP, MAC: spec.Net.MAC}}
	}
	return vc
}

func (d *Driver) checkSpec(spec hypervisor.Spec) error {
	switch {
	case spec.ID == "":
		return errs.New(errs.InvalidArgument, "spec: empty vm id")
	case spec.CPUs < 1 || spec.CPUs > 255:
		return errs.New(errs.InvalidArgument, "spec: %d vcpus out of range 1..255", spec.CPUs)
	case spec.MemoryMiB < 32:
		return errs.New(errs.InvalidArgument, "spec: %d MiB memory is below 32 MiB", spec.MemoryMiB)
	case spec.Kernel == "":
		return errs.New(errs.InvalidArgument, "spec: no kernel")
	case spec.RunDir == "" || !filepath.IsAbs(spec.RunDir):
		return errs.New(errs.InvalidArgument, "spec: run dir %q must be an absolute path", spec.RunDir)
	case len(filepath.Join(spec.RunDir, vsockSocketName)) > maxSocketPath:
		return errs.New(errs.InvalidArgument, "spec: run dir %q too long for unix sockets", spec.RunDir)
	case spec.VsockCID < 3:
		return errs.New(errs.InvalidArgument, "spec: vsock cid %d must be >= 3", spec.VsockCID)
	}
	for i, disk := range spec.Disks {
		if disk.Format != "qcow2" && disk.Format != "raw" {
			return errs.New(errs.InvalidArgument, "spec: disk %d: format %q, want qcow2 or raw", i, disk.Format)
		}
	}
	if spec.Net != nil && spec.Net.TAP == "" {
		return errs.New(errs.InvalidArgument, "spec: network interface without a tap")
	}
	return nil
}

// launch starts a VMM for spec and waits until its API answers; the
// returned undo kills it and removes its sockets. It is the common start of
// Start and Restore.
func (d *Driver) launch(spec hypervisor.Spec) (h *hypervisor.Handle, steps []launch.Step) {
	h = &hypervisor.Handle{
		Driver:    Name,
		APISocket: filepath.Join(spec.RunDir, apiSocketName),
		Agent:     hypervisor.AgentEndpoint{Kind: "hybrid-vsock", Path: filepath.Join(spec.RunDir, vsockSocketName), CID: spec.VsockCID, Port: d.cfg.AgentPort},
		RunDir:    spec.RunDir,
	}
	logPath := filepath.Join(spec.RunDir, vmmLogName)
	var c *launch.Child
	steps = []launch.Step{
		{Name: "check spec", Do: func(context.Context) error { return d.checkSpec(spec) }},
		{Name: "prepare run dir", Do: func(context.Context) error {
			if err := os.MkdirAll(spec.RunDir, 0o700); err != nil {
				return err
			}
			// Stale sockets of an earlier run would make the VMM fail to bind.
			return removeSockets(spec.RunDir)
		}, Undo: func() { _ = removeSockets(spec.RunDir) }},
		{Name: "spawn vmm", Do: func(context.Context) error {
			var err error
			c, err = launch.Spawn([]string{d.cfg.Binary, "--api-socket", h.APISocket}, spec.RunDir, logPath)
			if err != nil {
				return err
			}
			h.PID, h.StartTime = c.PID, c.Start
			d.log.Info("vmm started", "vm_id", spec.ID, "pid", c.PID)
			return nil
		}, Undo: func() { d.stopChild(c) }},
		{Name: "wait for api", Do: func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
			defer cancel()
			return d.waitAPI(ctx, c, h.APISocket, logPath)
		}},
	}
	return h, steps
}

// waitAPI polls vmm.ping until it answers, the child exits or ctx ends.
func (d *Driver) waitAPI(ctx context.Context, c *launch.Child, socket, logPath string) error {
	cl := newClient(socket)
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cl.ping(pctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-c.Exited:
			return errs.New(errs.Unavailable, "vmm exited: %s", launch.LogTail(logPath, 2048))
		case <-ctx.Done():
			return errs.New(errs.Unavailable, "vmm api did not answer: %v (last error: %v)", ctx.Err(), err)
		case <-t.C:
		}
	}
}

// Start launches the VMM, creates and boots the VM. On failure everything
// it did is undone (the process killed and reaped, its sockets removed).
func (d *Driver) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
	h, steps := d.launch(spec)
	cl := newClient(h.APISocket)
	steps = append(steps,
		launch.Step{Name: "vm.create", Do: func(ctx context.Context) error {
			return cl.put(ctx, "vm.create", BuildVMConfig(d.cfg, spec))
		}},
		launch.Step{Name: "vm.boot", Do: func(ctx context.Context) error { return cl.put(ctx, "vm.boot", nil) }},
	)
	if err := launch.RunSteps(ctx, d.log, steps); err != nil {
		return nil, fmt.Errorf("start vm %s: %w", spec.ID, err)
	}
	d.log.Info("vm booted", "vm_id", spec.ID, "pid", h.PID)
	return h, nil
}

// Alive reports whether h's VMM process runs (PID and start time match, not
// a zombie).
func (d *Driver) Alive(h *hypervisor.Handle) bool {
	return h != nil && procfs.Alive(h.PID, h.StartTime)
}

func (d *Driver) notRunning(op string, h *hypervisor.Handle) error {
	return errs.New(errs.FailedPrecondition, "%s: vmm pid %d is not running", op, h.PID)
}

// Info reports the VM's state. A VMM that is gone is StateStopped. A VMM
// whose VM has shut down (state Shutdown) or was never booted (Created)
// is also reported stopped: the guest does not run.
func (d *Driver) Info(ctx context.Context, h *hypervisor.Handle) (hypervisor.Info, error) {
	if !d.Alive(h) {
		return hypervisor.Info{State: hypervisor.StateStopped}, nil
	}
	vi, err := newClient(h.APISocket).info(ctx)
	if err != nil {
		if !d.Alive(h) { // died during the call
			return hypervisor.Info{State: hypervisor.StateStopped}, nil
		}
		return hypervisor.Info{}, fmt.Errorf("info: %w", err)
	}
	info := hypervisor.Info{}
	switch vi.State {
	case "Running":
		info.State = hypervisor.StateRunning
	case "Paused", "BreakPoint":
		info.State = hypervisor.StatePaused
	default: // Created, Shutdown
		info.State = hypervisor.StateStopped
	}
	if vi.Config.CPUs != nil {
		info.CPUs = vi.Config.CPUs.BootVCPUs
	}
	if m := vi.Config.Memory; m != nil {
		info.MemoryMiB = int((m.Size + m.HotpluggedSize) >> 20)
	}
	return info, nil
}

// state returns the VM state string from vm.info.
func (d *Driver) state(ctx context.Context, h *hypervisor.Handle) (string, error) {
	vi, err := newClient(h.APISocket).info(ctx)
	return vi.State, err
}

// Pause pauses the vCPUs; pausing a paused VM is a no-op.
func (d *Driver) Pause(ctx context.Context, h *hypervisor.Handle) error {
	if !d.Alive(h) {
		return d.notRunning("pause", h)
	}
	if st, err := d.state(ctx, h); err == nil && st == "Paused" {
		return nil
	}
	if err := newClient(h.APISocket).put(ctx, "vm.pause", nil); err != nil {
		return fmt.Errorf("pause: %w", err)
	}
	return nil
}

// Resume resumes a paused VM; resuming a running VM is a no-op.
func (d *Driver) Resume(ctx context.Context, h *hypervisor.Handle) error {
	if !d.Alive(h) {
		return d.notRunning("resume", h)
	}
	if st, err := d.state(ctx, h); err == nil && st == "Running" {
		return nil
	}
	if err := newClient(h.APISocket).put(ctx, "vm.resume", nil); err != nil {
		return fmt.Errorf("resume: %w", err)
	}
	return nil
}

// Shutdown presses the power button and waits up to timeout for the VMM to
// exit; the VMM is told to quit (vmm.shutdown) as soon as the VM reports
// Shutdown. Past the timeout, or at once when the button is refused (a
// paused VM cannot act on it), it stops the VM hard (vm.shutdown,
// vmm.shutdown), and finally kills the process. Idempotent: an already
// stopped VM only has its sockets removed.
func (d *Driver) Shutdown(ctx context.Context, h *hypervisor.Handle, timeout time.Duration) error {
	if d.Alive(h) {
		cl := newClient(h.APISocket)
		gone := false
		if err := cl.put(ctx, "vm.power-button", nil); err != nil {
			// Not booted, paused or already shutting down: nothing in the
			// guest will act on the button, so do not wait for it.
			d.log.Info("power button refused, stopping the vm", "pid", h.PID, "err", err)
		} else {
			wctx, cancel := context.WithTimeout(ctx, timeout)
			gone = d.waitExit(wctx, h, cl)
			cancel()
		}
		if !gone && ctx.Err() == nil {
			d.log.Info("guest did not power off in time, stopping it", "pid", h.PID, "timeout", timeout)
			hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_ = cl.put(hctx, "vm.shutdown", nil)
			_ = cl.put(hctx, "vmm.shutdown", nil)
			gone = d.waitExit(hctx, h, nil)
			cancel()
		}
		if !gone {
			if err := d.kill(ctx, h); err != nil {
				return fmt.Errorf("shutdown: %w", err)
			}
		}
	}
	if err := removeSockets(h.RunDir); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// waitExit polls until h's process is gone or ctx ends, reporting which.
// With a client, a VM seen in state Shutdown makes it ask the VMM to exit.
func (d *Driver) waitExit(ctx context.Context, h *hypervisor.Handle, cl *client) bool {
	t := time.NewTicker(d.cfg.PollInterval)
	defer t.Stop()
	asked := false
	for n := 0; ; n++ {
		if !d.Alive(h) {
			return true
		}
		if cl != nil && !asked && n%5 == 4 {
			ictx, cancel := context.WithTimeout(ctx, time.Second)
			if st, err := d.state(ictx, h); err == nil && st == "Shutdown" {
				_ = cl.put(ictx, "vmm.shutdown", nil)
				asked = true
			}
			cancel()
		}
		select {
		case <-ctx.Done():
			return !d.Alive(h)
		case <-t.C:
		}
	}
}

// Kill stops the VMM at once (SIGKILL) and removes its sockets. Idempotent;
// a handle whose PID now names another process kills nothing.
func (d *Driver) Kill(ctx context.Context, h *hypervisor.Handle) error {
	if err := d.kill(ctx, h); err != nil {
		return fmt.Errorf("kill: %w", err)
	}
	if err := removeSockets(h.RunDir); err != nil {
		return fmt.Errorf("kill: %w", err)
	}
	return nil
}

func (d *Driver) kill(ctx context.Context, h *hypervisor.Handle) error {
	if _, err := procfs.Signal(h.PID, h.StartTime, unix.SIGKILL); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d.cfg.StopTimeout)
	defer cancel()
	return procfs.WaitGone(ctx, h.PID, h.StartTime, d.cfg.PollInterval)
}

func (d *Driver) stopChild(c *launch.Child) {
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.StopTimeout)
	defer cancel()
	_ = d.kill(ctx, &hypervisor.Handle{PID: c.PID, StartTime: c.Start})
	select {
	case <-c.Exited:
	case <-ctx.Done():
	}
}

// removeSockets removes the sockets the VMM creates in runDir: the API
// socket and the hybrid vsock socket with its per-port listeners.
func removeSockets(runDir string) error {
	if runDir == "" {
		return nil
	}
	paths := []string{filepath.Join(runDir, apiSocketName), filepath.Join(runDir, vsockSocketName)}
	more, _ := filepath.Glob(filepath.Join(runDir, vsockSocketName+"_*"))
	for _, p := range append(paths, more...) {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove socket: %w", err)
		}
	}
	return nil
}

// SaveState pauses the VM and writes its snapshot (config.json, state.json,
// memory-ranges) to dir, which is created. The VM stays paused.
func (d *Driver) SaveState(ctx context.Context, h *hypervisor.Handle, dir string) error {
	if !d.Alive(h) {
		return d.notRunning("save state", h)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := d.Pause(ctx, h); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := newClient(h.APISocket).put(ctx, "vm.snapshot", VMSnapshotConfig{DestinationURL: "file://" + abs}); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// snapshotConfig is the name of the VM configuration in a snapshot.
const snapshotConfig = "config.json"

// Restore starts a new VMM and restores the snapshot in dir into it, then
// resumes the VM. The snapshot's configuration is first pointed at spec's
// run dir (vsock socket), console log, disks and TAP, so a VM can be
// restored under a new run dir or onto copies of its disks. A snapshot
// whose vCPU count or memory size differs from spec is refused
// (errs.FailedPrecondition). On failure nothing is left running.
func (d *Driver) Restore(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	h, steps := d.launch(spec)
	cl := newClient(h.APISocket)
	adapt := launch.Step{Name: "adapt snapshot", Do: func(context.Context) error {
		return adaptSnapshot(filepath.Join(abs, snapshotConfig), d.cfg, spec)
	}}
	steps = append(steps[:1], append([]launch.Step{adapt}, steps[1:]...)...) // after "check spec"
	steps = append(steps,
		launch.Step{Name: "vm.restore", Do: func(ctx context.Context) error {
			return cl.put(ctx, "vm.restore", RestoreConfig{SourceURL: "file://" + abs})
		}},
		launch.Step{Name: "vm.resume", Do: func(ctx context.Context) error { return cl.put(ctx, "vm.resume", nil) }},
	)
	if err := launch.RunSteps(ctx, d.log, steps); err != nil {
		return nil, fmt.Errorf("restore vm %s: %w", spec.ID, err)
	}
	d.log.Info("vm restored", "vm_id", spec.ID, "pid", h.PID, "from", abs)
	return h, nil
}

// adaptSnapshot rewrites the paths in a snapshot's config.json for spec,
// keeping every other field as Cloud Hypervisor wrote it. It is idempotent
// and atomic (write aside, rename).
func adaptSnapshot(path string, cfg Config, spec hypervisor.Spec) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return errs.New(errs.NotFound, "no snapshot at %s", filepath.Dir(path))
	}
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	want := BuildVMConfig(cfg, spec)
	if cpus, ok := doc["cpus"].(map[string]any); ok {
		if n, _ := cpus["boot_vcpus"].(float64); int(n) != spec.CPUs {
			return errs.New(errs.FailedPrecondition, "snapshot has %v vcpus, spec %d", cpus["boot_vcpus"], spec.CPUs)
		}
	}
	if mem, ok := doc["memory"].(map[string]any); ok {
		size, _ := mem["size"].(float64)
		plugged, _ := mem["hotplugged_size"].(float64)
		if int64(size+plugged) != want.Memory.Size {
			return errs.New(errs.FailedPrecondition, "snapshot has %d MiB memory, spec %d MiB", int64(size+plugged)>>20, spec.MemoryMiB)
		}
	}
	if v, ok := doc["vsock"].(map[string]any); ok {
		v["socket"] = want.Vsock.Socket
		v["cid"] = want.Vsock.CID
	}
	if s, ok := doc["serial"].(map[string]any); ok && want.Serial.Mode == "File" {
		s["mode"], s["file"] = "File", want.Serial.File
	}
	if disks, ok := doc["disks"].([]any); ok {
		if len(disks) != len(want.Disks) {
			return errs.New(errs.FailedPrecondition, "snapshot has %d disks, spec %d", len(disks), len(want.Disks))
		}
		for i, x := range disks {
			if m, ok := x.(map[string]any); ok {
				m["path"] = want.Disks[i].Path
			}
		}
	}
	if nets, ok := doc["net"].([]any); ok && len(want.Net) == 1 && len(nets) == 1 {
		if m, ok := nets[0].(map[string]any); ok {
			m["tap"], m["mac"] = want.Net[0].TAP, want.Net[0].MAC
		}
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// Resize changes the vCPU count and memory of the running VM (0 leaves one
// unchanged). vCPUs can grow up to Config.MaxVCPUs; memory can grow by the
// hotplug area (Config.MemoryHotplugMiB), and shrinking memory only takes
// effect at the next boot. The guest must online hotplugged CPUs and memory
// (the agent does).
func (d *Driver) Resize(ctx context.Context, h *hypervisor.Handle, cpus, memoryMiB int) error {
	if !d.Alive(h) {
		return d.notRunning("resize", h)
	}
	if cpus < 0 || memoryMiB < 0 {
		return errs.New(errs.InvalidArgument, "resize: negative size")
	}
	var body VMResize
	if cpus > 0 {
		body.DesiredVCPUs = &cpus
	}
	if memoryMiB > 0 {
		ram := int64(memoryMiB) << 20
		body.DesiredRAM = &ram
	}
	if body.DesiredVCPUs == nil && body.DesiredRAM == nil {
		return nil
	}
	if err := newClient(h.APISocket).put(ctx, "vm.resize", body); err != nil {
		return fmt.Errorf("resize to %d vcpus %d MiB: %w", cpus, memoryMiB, err)
	}
	return nil
}

// ResizeDisk grows disk diskID (see DiskID) of the running VM to bytes;
// the guest sees the new size at once (virtio-blk config change).
func (d *Driver) ResizeDisk(ctx context.Context, h *hypervisor.Handle, diskID string, bytes int64) error {
	if !d.Alive(h) {
		return d.notRunning("resize disk", h)
	}
	if bytes <= 0 || !strings.HasPrefix(diskID, "disk") {
		return errs.New(errs.InvalidArgument, "resize disk %q to %d bytes: invalid", diskID, bytes)
	}
	if err := newClient(h.APISocket).put(ctx, "vm.resize-disk", VMResizeDisk{ID: diskID, DesiredSize: bytes}); err != nil {
		return fmt.Errorf("resize disk %s: %w", diskID, err)
	}
	return nil
}

// Ping returns the VMM's version (vmm.ping).
func (d *Driver) Ping(ctx context.Context, h *hypervisor.Handle) (string, error) {
	if !d.Alive(h) {
		return "", d.notRunning("ping", h)
	}
	r, err := newClient(h.APISocket).ping(ctx)
	if err != nil {
		return "", fmt.Errorf("ping: %w", err)
	}
	return r.Version, nil
}

// DialAgent connects to the guest agent of h over the hybrid vsock socket.
func (d *Driver) DialAgent(ctx context.Context, h *hypervisor.Handle) (net.Conn, error) {
	if h.Agent.Kind != "hybrid-vsock" {
		return nil, errs.New(errs.InvalidArgument, "dial agent: endpoint kind %q is not hybrid-vsock", h.Agent.Kind)
	}
	return DialAgent(ctx, h.Agent.Path, h.Agent.Port)
}
