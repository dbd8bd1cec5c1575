package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/starttrace"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
	"golang.org/x/crypto/ssh"
)

// undo is a stack of compensating actions run in reverse, once.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }
func (u *undo) run() {
	for i := len(*u) - 1; i >= 0; i-- {
		(*u)[i]()
	}
	*u = nil
}

// Create implements Engine.
func (l *Local) Create(ctx context.Context, spec CreateSpec, progress Progress) (Instance, error) {
	if !vm.IsID(spec.ID) {
		return Instance{}, errs.New(errs.InvalidArgument, "invalid vm id %q", spec.ID)
	}
	if err := vm.ValidName("vm", spec.Name); err != nil {
		return Instance{}, err
	}
	for _, k := range spec.AuthorizedKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return Instance{}, errs.New(errs.InvalidArgument, "invalid ssh public key %.40q: %v", k, err)
		}
	}
	if spec.CopyFrom != nil {
		return l.copyVM(ctx, spec, progress)
	}
	progress.Say("image")
	img, err := l.Images.Resolve(ctx, spec.Image)
	if err != nil {
		return Instance{}, err
	}
	minDisk := int((img.SizeBytes + 1<<30 - 1) >> 30)
	if spec.DiskGiB == 0 {
		spec.DiskGiB = max(1, spec.DefaultDiskGiB, minDisk)
	}
	if err := vm.ValidResources(spec.CPUs, spec.MemoryMiB, spec.DiskGiB); err != nil {
		return Instance{}, err
	}
	if spec.DiskGiB < minDisk {
		return Instance{}, errs.New(errs.InvalidArgument, "disk %d GiB is smaller than image %s (%d GiB)", spec.DiskGiB, img.Ref, minDisk)
	}
	row := store.VM{ID: spec.ID, Name: spec.Name, OwnerID: spec.Owner, Image: img.Ref, CPUs: spec.CPUs,
		MemoryMiB: spec.MemoryMiB, DiskGiB: spec.DiskGiB, Port: 80}
	var res createResult
	inst, err := l.newVM(ctx, row, "create", progress, func(o *op, row store.VM) (store.VM, error) {
		return l.createSteps(ctx, o, row, img, spec, progress, &res)
	})
	if err != nil {
		return inst, err
	}
	inst.Boot, inst.Warnings = res.boot, res.warnings
	if res.boot == BootCold && !spec.Cold {
		// The first cold create of a shape: make it warm next time.
		l.warmLater(img, row.CPUs, row.MemoryMiB, inst.DiskGiB)
	}
	return inst, nil
}

// newVM records a new VM (state creating, fresh addresses) and its
// durable operation in one transaction that also runs the admission
// policy, then runs steps under the VM's lock. If steps fail, everything
// that hangs off the new ID is removed, and nothing else.
func (l *Local) newVM(ctx context.Context, row store.VM, kind string, progress Progress, steps func(*op, store.VM) (store.VM, error)) (Instance, error) {
	row.State = vm.Creating
	row.CreatedAt = time.Now().UTC()
	oprow := newOpRow(row.ID, kind)
	if err := l.checkFreeSpace(kind+" vm "+row.Name, ReserveBytes); err != nil {
		return Instance{}, err
	}
	progress.Say("allocate")
	err := l.DB.Tx(ctx, func(q store.Q) error {
		if _, err := store.GetVMByID(ctx, q, row.ID); err == nil {
			return errs.New(errs.AlreadyExists, "a vm with id %s already exists", row.ID)
		}
		a := Admission{Kind: AdmitCreate, ID: row.ID, Name: row.Name, Owner: row.OwnerID,
			Want: Resources{CPUs: row.CPUs, MemoryMiB: row.MemoryMiB, DiskGiB: row.DiskGiB}}
		if err := l.admitOK(ctx, q, a); err != nil {
			return err
		}
		ip, mac, cid, err := l.allocate(ctx, q, row.ID)
		if err != nil {
			return err
		}
		row.IP, row.MAC, row.CID = ip.String(), mac, cid
		if err := store.InsertVM(ctx, q, row); err != nil {
			return err
		}
		return store.InsertOperation(ctx, q, oprow)
	})
	if err != nil {
		return Instance{}, fmt.Errorf("%s vm %s: %w", kind, row.Name, l.diskFull(err))
	}
	o := &op{l: l, row: oprow}
	unlock, err := l.lockVM(ctx, row.ID)
	if err != nil {
		l.purge(context.WithoutCancel(ctx), row.ID)
		o.finish(ctx, err)
		return Instance{}, err
	}
	defer unlock()
	v, err := steps(o, row)
	if err != nil {
		err = l.diskFull(err)
		l.purge(context.WithoutCancel(ctx), row.ID)
		o.finish(ctx, err)
		return Instance{}, fmt.Errorf("%s vm %s: %w", kind, row.Name, err)
	}
	o.finish(ctx, nil)
	starttrace.Mark("engine: op finished")
	return InstanceOf(v), nil
}

func (l *Local) createSteps(ctx context.Context, o *op, row store.VM, img Image, spec CreateSpec, progress Progress, res *createResult) (store.VM, error) {
	if l.tryWarm(ctx, o, &row, img, spec, progress, res) {
		return row, nil
	}
	if err := ctx.Err(); err != nil {
		return row, err
	}
	res.boot = BootCold
	progress.Say("disk")
	o.step(ctx, "disk", nil)
	if err := os.MkdirAll(l.vmDir(row.ID), 0o700); err != nil {
		return row, err
	}
	if err := l.Disks.CreateOverlay(ctx, img.Path, img.Format, l.diskPath(row.ID), int64(row.DiskGiB)<<30); err != nil {
		return row, fmt.Errorf("disk: %w", err)
	}
	v, cl, err := l.boot(ctx, o, row, progress)
	if err != nil {
		return row, err
	}
	defer cl.Close()
	// The hostname comes from the kernel command line at every boot; keys
	// are written once, when there are any.
	if keys := spec.AuthorizedKeys; len(keys) > 0 {
		progress.Say("configure")
		o.step(ctx, "configure", nil)
		if err := cl.Configure(ctx, proto.Configure{Hostname: &row.Name, AuthorizedKeys: keys}); err != nil {
			return v, fmt.Errorf("configure guest: %w", err)
		}
	}
	return v, nil
}

// diskFull classes err as ResourceExhausted when it says the state
// filesystem is full (errs.DiskFull); other errors pass unchanged.
func (l *Local) diskFull(err error) error { return errs.DiskFull(err, l.cfg.StateDir) }

func (l *Local) diskPath(id string) string { return filepath.Join(l.vmDir(id), "disk.qcow2") }

// boot starts the hypervisor for a VM row whose disk exists, waits for its
// agent and records it running. On failure it has stopped what it started.
func (l *Local) boot(ctx context.Context, o *op, row store.VM, progress Progress) (store.VM, *vsockcli.Client, error) {
	var u undo
	defer u.run()
	img, err := l.Images.Resolve(ctx, row.Image)
	if err != nil {
		return row, nil, fmt.Errorf("image of vm %s: %w", row.Name, err)
	}
	bootMsg := "boot"
	if !l.Driver.Caps().KVM {
		bootMsg = "boot (no usable KVM: TCG software emulation, slower)"
	}
	ip, run, err := l.attach(ctx, o, &u, row, progress, bootMsg)
	if err != nil {
		return row, nil, err
	}
	spec := l.spec(row, img, run, ip)
	start := time.Now()
	console := consolelog.NewFollowerFromEnd(spec.ConsoleLog) // this boot's output only
	h, err := l.Driver.Start(ctx, spec)
	if err != nil {
		console.Close()
		return row, nil, fmt.Errorf("boot: %w", err)
	}
	u.push(func() { l.Driver.Kill(context.Background(), h) })
	starttrace.Mark("engine: hypervisor started")
	o.step(ctx, "agent", map[string]any{"handle": h})
	// Record the handle at once so a crash from here on is found.
	row.Handle = EncodeHandle(h)
	if err := store.UpdateVM(ctx, l.DB, row); err != nil {
		console.Close()
		return row, nil, err
	}
	starttrace.Mark("engine: handle recorded")

	progress.Say("agent")
	var learned string
	cl, err := l.waitReady(ctx, console, h.Agent, l.agentConfig(row.AgentKey, &learned))
	if err != nil {
		if ctx.Err() != nil {
			return row, nil, ctx.Err()
		}
		return row, nil, l.notReady(row.Name, row.ID, err)
	}
	// The agent grows the root filesystem to the disk by itself, in the
	// background. After a resize, wait for it here so the new size is
	// there when start returns.
	if grow := l.growMarker(row.ID); fileExists(grow) {
		if _, err := cl.GrowFS(ctx); err != nil {
			l.log.Warn("grow guest filesystem", "vm_id", row.ID, "err", err)
		} else {
			os.Remove(grow)
		}
	}
	starttrace.Mark("engine: agent ready")
	l.log.Info("vm ready", "vm_id", row.ID, "vm", row.Name, "pid", h.PID, "ready_ms", time.Since(start).Milliseconds())
	if row.AgentKey == "" {
		row.AgentKey = learned
	}
	row.State = vm.Running
	row.StartedAt = time.Now().UTC()
	if err := store.UpdateVM(ctx, l.DB, row); err != nil {
		cl.Close()
		return row, nil, err
	}
	starttrace.Mark("engine: recorded running")
	u = nil // success: keep everything
	// The first `ssh vm@host` (any agent call) dials nothing.
	l.agents.adopt(row.ID, h, cl)
	return row, cl, nil
}

func (l *Local) spec(row store.VM, img Image, run string, ip netip.Addr) hypervisor.Spec {
	return hypervisor.Spec{
		ID: row.ID, Name: row.Name, CPUs: row.CPUs, MemoryMiB: row.MemoryMiB,
		Kernel: img.Kernel, Initramfs: img.Initramfs,
		Cmdline: vm.Cmdline(vm.BootParams{
			ID: row.ID, Name: row.Name, HostKey: hostKeyParam(l.HostKey),
			IP:      netip.PrefixFrom(ip, l.cfg.Subnet.Bits()).String(),
			Gateway: l.cfg.Gateway.String(), DNS: l.cfg.DNS,
		}),
		Disks:      []hypervisor.Disk{{Path: l.diskPath(row.ID), Format: "qcow2"}},
		Net:        &hypervisor.NetIface{TAP: tapName(row.ID), MAC: row.MAC},
		RunDir:     run,
		ConsoleLog: l.consolePath(row.ID),
		VsockCID:   row.CID,
	}
}

func hostKeyParam(k ssh.Signer) string {
	return strings.TrimSpace(strings.SplitN(string(ssh.MarshalAuthorizedKey(k.PublicKey())), " ", 3)[1])
}

// purge removes every trace of VM id: process, TAP, sockets, disk,
// snapshots and its row. It is idempotent and touches nothing that does not
// hang off id.
func (l *Local) purge(ctx context.Context, id string) {
	v, err := store.GetLocalVMByID(ctx, l.DB, id)
	if err == nil {
		if h, _ := DecodeHandle(v.Handle); h != nil {
			l.Driver.Kill(ctx, h)
		}
	}
	l.killRunDir(id)
	l.Network.RemovePort(ctx, tapName(id))
	l.discardForkState(id) // a fork's RAM copy outside its dir
	l.dropMoveState(id)    // a suspend's kept RAM file outside its dir
	l.precopy.dropIn(id, nil)
	os.RemoveAll(l.runDir(id))
	os.RemoveAll(l.vmDir(id))
	if err == nil {
		// Only this host's record: the control plane's row of a VM that
		// moved to another host shares the ID (issue 15).
		store.DeleteVM(ctx, l.DB, id)
	} else if snaps, err := store.ListSnapshots(ctx, l.DB, id); err == nil {
		// That row's snapshots were this host's, and moved with it.
		for _, s := range snaps {
			store.DeleteSnapshot(ctx, l.DB, s.ID)
		}
	}
	l.removeLock(id)
}

// killRunDir kills the processes of VM id found by its run dir (one whose
// handle was never recorded, or a template's build VM) and has the driver
// remove what it keeps of them outside the run dir (the qemu driver's RAM
// file and cgroup), at once rather than at the sweeps' minute of grace.
func (l *Local) killRunDir(id string) {
	killByRunDir(l.runDir(id))
	if f, ok := l.Driver.(runDirForgetter); ok {
		f.ForgetRunDir(l.runDir(id))
	}
}

// growMarker is a file whose presence says the VM's disk grew while it was
// stopped, so the next boot waits for the guest filesystem to grow.
func (l *Local) growMarker(id string) string { return filepath.Join(l.vmDir(id), "grow-pending") }

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var errReadyTimeout = errors.New("timed out waiting for the guest agent")

// waitReady waits up to the ready timeout for the guest agent at ep. It
// takes console over (watchConsole closes it): a guest whose kernel
// panics will never answer, so the wait ends at once with the panic as
// the error.
func (l *Local) waitReady(ctx context.Context, console *consolelog.Follower, ep hypervisor.AgentEndpoint, cfg vsockcli.Config) (*vsockcli.Client, error) {
	wctx, cancel := context.WithTimeoutCause(ctx, l.cfg.ReadyTimeout, errReadyTimeout)
	defer cancel()
	pctx, stop := context.WithCancelCause(wctx)
	defer stop(nil)
	go watchConsole(pctx, console, stop)
	if starttrace.Enabled() && cfg.Observe == nil {
		// The instant each phase of the wait ended.
		cfg.Observe = func(phase string, _ time.Duration) { starttrace.Mark("engine: agent " + phase) }
	}
	cl, err := vsockcli.WaitReady(pctx, ep, cfg)
	if err != nil {
		if cause := context.Cause(pctx); cause != nil && cause != errReadyTimeout && !errors.Is(cause, context.Canceled) && ctx.Err() == nil {
			err = cause
		}
		return nil, err
	}
	return cl, nil
}

// watchConsole reads a booting VM's console log as it grows (across
// rotations) and calls stop with an error when the guest kernel panics.
// r follows the log from where this boot began (an earlier boot's panic
// does not count); watchConsole closes it.
func watchConsole(ctx context.Context, r *consolelog.Follower, stop context.CancelCauseFunc) {
	var tail []byte
	defer r.Close()
	buf := make([]byte, 64<<10)
	wait := true
	for ctx.Err() == nil {
		if wait {
			select {
			case <-ctx.Done():
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
		n, _ := r.Read(buf)
		wait = n < len(buf) // a full buffer: more is there, read on
		if n == 0 {
			continue
		}
		chunk := append(tail, buf[:n]...)
		if i := bytes.Index(chunk, []byte("Kernel panic - not syncing")); i >= 0 {
			line, _, _ := bytes.Cut(chunk[i:], []byte("\n"))
			stop(errs.New(errs.Unavailable, "the guest kernel panicked: %s", strings.TrimSpace(string(line))))
			return
		}
		if len(chunk) > 64 {
			tail = append([]byte(nil), chunk[len(chunk)-64:]...)
		} else {
			tail = chunk
		}
	}
}

// attach gives row's VM its port on the bridge and a fresh run dir: the
// "network" and "boot" steps (bootMsg is the boot's progress line) of a
// cold boot, a warm clone and a fork (o, if not nil, records them). It
// pushes their removal onto u.
func (l *Local) attach(ctx context.Context, o *op, u *undo, row store.VM, progress Progress, bootMsg string) (netip.Addr, string, error) {
	ip, err := netip.ParseAddr(row.IP)
	if err != nil {
		return netip.Addr{}, "", err
	}
	progress.Say("network")
	if o != nil {
		o.step(ctx, "network", nil)
	}
	tap := tapName(row.ID)
	if err := l.Network.AddPort(ctx, tap, ip, row.MAC); err != nil {
		return ip, "", fmt.Errorf("network: %w", err)
	}
	u.push(func() { l.Network.RemovePort(context.Background(), tap) })
	progress.Say(bootMsg)
	if o != nil {
		o.step(ctx, "boot", nil)
	}
	run := l.runDir(row.ID)
	os.RemoveAll(run)
	if err := os.MkdirAll(run, 0o700); err != nil {
		return ip, "", err
	}
	u.push(func() { os.RemoveAll(run) })
	return ip, run, nil
}
