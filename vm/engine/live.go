package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
	"golang.org/x/crypto/ssh"
)

// LiveMigrator is an engine that moves running instances to another
// engine while they run (`move --live`, issue 15), with the hypervisor's
// live migration (hypervisor.LiveMigrator). The caller drives both ends:
//
//  1. source.DescribeOut(id): the running machine, for the target.
//  2. target.PrepareIncoming(spec): the instance recorded here (state
//     creating), a disk on this host's copy of the image, an address and
//     TAP of this host, the hypervisor started paused and waiting.
//  3. target.DialIncoming(id, "nbd") and (id, "migration") give streams
//     that the caller passes to source.MigrateOut (across hosts, relayed),
//     with target.AgentTrustKey (the guest's agent then accepts the
//     target's logins too).
//     MigrateOut mirrors the disk, migrates the memory and leaves the
//     source paused; it fails with the source running again.
//  4. target.FinishIncoming(id): resumed, its clock set, its network
//     moved to its own MAC and address (hostname, machine-id and keys
//     stay); running.
//  5. source: Destroy. Or, if 4 failed: target.AbortIncoming and
//     source.ResumeOut.
//
// A crash of the target's engine before 4 removes the half-made
// instance (Reconcile); a crash of the source's engine during 3 resumes
// the source (Reconcile). Which copy survives a crash of the caller is
// the caller's record (service.SettleMoves).
type LiveMigrator interface {
	DescribeOut(ctx context.Context, id string) ([]byte, error)
	PrepareIncoming(ctx context.Context, spec IncomingSpec, progress Progress) (Instance, error)
	DialIncoming(ctx context.Context, id, channel string) (net.Conn, error)
	// AgentTrustKey is the key this engine logs in to guest agents with
	// (authorized_keys form): the source's guest must trust it before
	// its memory moves here.
	AgentTrustKey(ctx context.Context) (string, error)
	// MigrateOut first makes the guest's agent trust trustKey (the
	// target's AgentTrustKey) beside this engine's key.
	MigrateOut(ctx context.Context, id, trustKey string, nbd, mig io.ReadWriteCloser, progress Progress) (hypervisor.MigrationStats, error)
	// FinishIncoming returns the instance and how long the call took
	// until the guest ran again.
	FinishIncoming(ctx context.Context, id string, progress Progress) (Instance, time.Duration, error)
	AbortIncoming(ctx context.Context, id string) error
	ResumeOut(ctx context.Context, id string) error
}

// IncomingSpec is the instance a live migration brings in: the source's
// identity, image and shape, and its agent's pinned key.
type IncomingSpec struct {
	ID        string `json:"id"`
	Name      string `json:"name"`
	Owner     string `json:"owner,omitempty"`
	Image     string `json:"image"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskGiB   int    `json:"disk_gib"`
	Port      int    `json:"port,omitempty"`
	// Source is the source's DescribeOut.
	Source []byte `json:"source"`
}

// liveSource is what DescribeOut tells the target: the agent's pinned key
// and the hypervisor's machine description.
type liveSource struct {
	AgentKey string `json:"agent_key"`
	Machine  []byte `json:"machine"`
}

// Operation kinds of live migrations: the target's from PrepareIncoming
// to FinishIncoming (recovered by removing the instance), the source's
// during MigrateOut (recovered by resuming it).
const (
	opLiveIn  = "live-in"
	opLiveOut = "live-out"
)

var _ LiveMigrator = (*Local)(nil)

func (l *Local) liveDriver() (hypervisor.LiveMigrator, error) {
	lm, ok := l.Driver.(hypervisor.LiveMigrator)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "live move is not supported by the %s hypervisor driver: %w", l.Driver.Name(), hypervisor.ErrUnsupported)
	}
	return lm, nil
}

// DescribeOut implements LiveMigrator.
func (l *Local) DescribeOut(ctx context.Context, id string) ([]byte, error) {
	lm, err := l.liveDriver()
	if err != nil {
		return nil, err
	}
	var out []byte
	err = l.withLock(ctx, id, func(v store.VM) error {
		if v.State != vm.Running {
			return errs.New(errs.FailedPrecondition, "live move of vm %s: it is %s; only a running vm moves live", v.Name, v.State)
		}
		if err := l.notTemplateBacked(v); err != nil {
			return err
		}
		h, err := l.runningHandle(v)
		if err != nil {
			return err
		}
		m, err := lm.DescribeOut(h)
		if err != nil {
			return err
		}
		out, err = json.Marshal(liveSource{AgentKey: v.AgentKey, Machine: m})
		return err
	})
	return out, err
}

// checkIncoming checks an incoming live move's spec (PrepareIncoming,
// StageIncoming) and returns this host's live driver and the source's
// description; bad input is errs.InvalidArgument.
func (l *Local) checkIncoming(spec IncomingSpec) (hypervisor.LiveMigrator, liveSource, error) {
	var src liveSource
	lm, err := l.liveDriver()
	if err != nil {
		return nil, src, err
	}
	if !vm.IsID(spec.ID) {
		return nil, src, errs.New(errs.InvalidArgument, "invalid vm id %q", spec.ID)
	}
	if err := vm.ValidName("vm", spec.Name); err != nil {
		return nil, src, err
	}
	if err := vm.ValidResources(spec.CPUs, spec.MemoryMiB, spec.DiskGiB); err != nil {
		return nil, src, err
	}
	if err := json.Unmarshal(spec.Source, &src); err != nil || src.AgentKey == "" || len(src.Machine) == 0 {
		return nil, src, errs.New(errs.InvalidArgument, "live move of vm %s: no agent key or machine in the source's description", spec.Name)
	}
	return lm, src, nil
}

// PrepareIncoming implements LiveMigrator.
func (l *Local) PrepareIncoming(ctx context.Context, spec IncomingSpec, progress Progress) (Instance, error) {
	lm, src, err := l.checkIncoming(spec)
	if err != nil {
		return Instance{}, err
	}
	progress.Say("image")
	img, err := l.Images.Resolve(ctx, spec.Image)
	if err != nil {
		return Instance{}, errs.New(errs.FailedPrecondition, "live move of vm %s: image %s is not on this host: %v", spec.Name, spec.Image, err)
	}
	port := spec.Port
	if port == 0 {
		port = 80
	}
	row := store.VM{ID: spec.ID, Name: spec.Name, OwnerID: spec.Owner, Image: img.Ref, CPUs: spec.CPUs,
		MemoryMiB: spec.MemoryMiB, DiskGiB: spec.DiskGiB, Port: port, AgentKey: src.AgentKey}
	return l.newVM(ctx, row, opLiveIn, progress, func(o *op, row store.VM) (store.VM, error) {
		var u undo
		defer u.run()
		progress.Say("disk")
		o.step(ctx, "disk", nil)
		if err := os.MkdirAll(l.vmDir(row.ID), 0o700); err != nil {
			return row, err
		}
		if err := l.Disks.CreateOverlay(ctx, img.Path, img.Format, l.diskPath(row.ID), int64(row.DiskGiB)<<30); err != nil {
			return row, fmt.Errorf("disk: %w", err)
		}
		ip, run, err := l.attach(ctx, o, &u, row, progress, "wait for the migration")
		if err != nil {
			return row, err
		}
		h, err := lm.StartIncoming(ctx, l.spec(row, img, run, ip), src.Machine)
		if err != nil {
			return row, err
		}
		u.push(func() { l.Driver.Kill(context.Background(), h) })
		row.Handle = EncodeHandle(h)
		if err := store.UpdateVM(ctx, l.DB, row); err != nil {
			return row, err
		}
		// The instance stays "creating", under an operation of this
		// process, until FinishIncoming: a crash removes it.
		if _, err := l.beginOp(ctx, row.ID, opLiveIn); err != nil {
			return row, err
		}
		u = nil
		return row, nil
	})
}

// incoming loads instance id waiting for a live migration.
func (l *Local) incoming(ctx context.Context, id string) (store.VM, *hypervisor.Handle, error) {
	v, err := l.load(ctx, id)
	if err != nil {
		return v, nil, err
	}
	h, _ := DecodeHandle(v.Handle)
	if v.State != vm.Creating || h == nil {
		return v, nil, errs.New(errs.FailedPrecondition, "vm %s is not waiting for a live migration (it is %s)", v.Name, v.State)
	}
	return v, h, nil
}

// DialIncoming implements LiveMigrator.
func (l *Local) DialIncoming(ctx context.Context, id, channel string) (net.Conn, error) {
	lm, err := l.liveDriver()
	if err != nil {
		return nil, err
	}
	_, h, err := l.incoming(ctx, id)
	if errs.ClassOf(err) == errs.NotFound {
		// Staged (StageIncoming), not recorded.
		if st, serr := l.stagedIncoming(id); serr == nil {
			h, err = DecodeHandle(st.Handle)
		}
	}
	if err == nil && h == nil {
		err = errs.New(errs.FailedPrecondition, "vm %s is not waiting for a live migration", id)
	}
	if err != nil {
		return nil, err
	}
	path, err := lm.IncomingSocket(h, channel)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, errs.New(errs.Unavailable, "live move of vm %s: %s channel: %w", id, channel, err)
	}
	return c, nil
}

// trustKeys makes v's guest agent accept logins from keys only.
func (l *Local) trustKeys(ctx context.Context, v store.VM, keys ...string) error {
	cl, err := l.agentOf(ctx, v)
	if err != nil {
		return err
	}
	defer cl.Close()
	return cl.Configure(ctx, proto.Configure{HostKeys: keys})
}

// MigrateOut implements LiveMigrator. The instance is locked meanwhile.
func (l *Local) MigrateOut(ctx context.Context, id, trustKey string, nbd, mig io.ReadWriteCloser, progress Progress) (hypervisor.MigrationStats, error) {
	var st hypervisor.MigrationStats
	lm, err := l.liveDriver()
	if err != nil {
		nbd.Close()
		mig.Close()
		return st, err
	}
	err = l.withLock(ctx, id, func(v store.VM) error {
		if v.State != vm.Running {
			nbd.Close()
			mig.Close()
			return errs.New(errs.FailedPrecondition, "live move of vm %s: it is %s; only a running vm moves live", v.Name, v.State)
		}
		h, err := l.runningHandle(v)
		if err != nil {
			nbd.Close()
			mig.Close()
			return err
		}
		if trustKey != "" {
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(trustKey)); err != nil {
				nbd.Close()
				mig.Close()
				return errs.New(errs.InvalidArgument, "live move of vm %s: bad target key: %v", v.Name, err)
			}
			progress.Say("trust the target")
			if err := l.trustKeys(ctx, v, l.hostKeyLine(), trustKey); err != nil {
				nbd.Close()
				mig.Close()
				return fmt.Errorf("live move of vm %s: make its agent trust the target: %w", v.Name, err)
			}
		}
		o, err := l.beginOp(ctx, v.ID, opLiveOut)
		if err != nil {
			nbd.Close()
			mig.Close()
			return err
		}
		l.agents.forget(v.ID)
		st, err = lm.MigrateOut(ctx, h, nbd, mig, func(s string) {
			progress.Say(s)
			o.step(ctx, s, nil)
		})
		o.finish(ctx, err)
		if err != nil && trustKey != "" {
			if terr := l.trustKeys(context.WithoutCancel(ctx), v, l.hostKeyLine()); terr != nil {
				l.log.Warn("live move failed: drop the target's key from the guest's agent", "vm_id", v.ID, "err", terr)
			}
		}
		return err
	})
	return st, err
}

// ResumeOut implements LiveMigrator: the source of a live migration that
// did not finish on the target runs again (a no-op when it runs), its
// clock set.
func (l *Local) ResumeOut(ctx context.Context, id string) error {
	return l.withLock(ctx, id, func(v store.VM) error {
		h, err := l.runningHandle(v)
		if err != nil {
			return err
		}
		if info, err := l.Driver.Info(ctx, h); err == nil && info.State == hypervisor.StateRunning {
			return nil
		}
		if err := l.Driver.Resume(ctx, h); err != nil {
			return err
		}
		l.bg.Add(1)
		go func() {
			defer l.bg.Done()
			l.stepClock(context.WithoutCancel(ctx), v)
		}()
		return nil
	})
}

// FinishIncoming implements LiveMigrator.
func (l *Local) FinishIncoming(ctx context.Context, id string, progress Progress) (Instance, time.Duration, error) {
	lm, err := l.liveDriver()
	if err != nil {
		return Instance{}, 0, err
	}
	unlock, err := l.lockVM(ctx, id)
	if err != nil {
		return Instance{}, 0, err
	}
	defer unlock()
	start := time.Now()
	row, h, err := l.incoming(ctx, id)
	if err != nil {
		return Instance{}, 0, err
	}
	console := consolelog.NewFollowerFromEnd(l.consolePath(row.ID))
	progress.Say("resume")
	if err := lm.FinishIncoming(ctx, h); err != nil {
		console.Close()
		return Instance{}, 0, fmt.Errorf("live move of vm %s: %w", row.Name, err)
	}
	resumed := time.Since(start)
	// Running here from now on: whatever follows is logged, never undone.
	row.State = vm.Running
	row.StartedAt = time.Now().UTC()
	if err := store.UpdateVM(context.WithoutCancel(ctx), l.DB, row); err != nil {
		l.log.Error("live move: record the running vm", "vm_id", row.ID, "err", err)
	}
	l.finishLiveIn(ctx, row.ID, nil)
	os.Remove(filepath.Join(l.vmDir(row.ID), incomingFile)) // adopted (AdoptIncoming)
	progress.Say("network")
	if err := l.moveGuestNetwork(ctx, console, row, h); err != nil {
		l.log.Warn("live move: the guest's network was not moved to this host's address", "vm_id", row.ID, "err", err)
		progress.Say("network: " + err.Error())
	}
	l.log.Info("vm migrated in", "vm_id", row.ID, "vm", row.Name, "pid", h.PID, "resume_ms", resumed.Milliseconds(), "ready_ms", time.Since(start).Milliseconds())
	return InstanceOf(row), resumed, nil
}

// finishLiveIn ends the live-in operation of id recorded by this engine.
func (l *Local) finishLiveIn(ctx context.Context, id string, cause error) {
	ops, err := store.RunningOperations(ctx, l.DB)
	if err != nil {
		return
	}
	for _, r := range ops {
		if r.VMID == id && r.Kind == opLiveIn {
			(&op{l: l, row: r}).finish(ctx, cause)
		}
	}
}

// AbortIncoming implements LiveMigrator: the instance and everything
// that hangs off it are removed (Destroy). Idempotent.
func (l *Local) AbortIncoming(ctx context.Context, id string) error {
	if st, err := l.stagedIncoming(id); err == nil {
		// Staged (StageIncoming): its handle is not in the store.
		if h, _ := DecodeHandle(st.Handle); h != nil {
			l.Driver.Kill(ctx, h)
		}
	}
	if err := l.Destroy(ctx, id); err != nil {
		return err
	}
	l.finishLiveIn(ctx, id, errs.New(errs.Unavailable, "live move aborted"))
	return nil
}

// moveGuestNetwork moves the migrated guest's eth0 to row's MAC and
// address on this host's subnet, and sets its clock (it stood still while
// the VM was paused). Hostname, machine-id and keys are kept: it is the
// same machine. The guest's TCP connections to its old address break.
func (l *Local) moveGuestNetwork(ctx context.Context, console *consolelog.Follower, row store.VM, h *hypervisor.Handle) error {
	cl, err := l.waitReady(ctx, console, h.Agent, l.agentConfig(row.AgentKey, nil))
	if err != nil {
		return err
	}
	defer cl.Close()
	ip, err := netip.ParseAddr(row.IP)
	if err != nil {
		return err
	}
	return l.configureMovedGuest(ctx, cl, row.MAC, ip)
}

// settleMovedGuest ends the restore of row, a guest that came to this
// host with its memory (a memory move, a moved memory snapshot) and
// answers at cl: it gets this host's identity (configureMovedGuest) and
// row is recorded running.
func (l *Local) settleMovedGuest(ctx context.Context, o *op, cl *vsockcli.Client, row store.VM, ip netip.Addr, progress Progress) (store.VM, error) {
	progress.Say("move network")
	o.step(ctx, "move network", nil)
	pctx, cancel := context.WithTimeout(ctx, l.cfg.ReadyTimeout)
	defer cancel()
	if err := l.configureMovedGuest(pctx, cl, row.MAC, ip); err != nil {
		return row, err
	}
	row.State = vm.Running
	row.StartedAt = time.Now().UTC()
	if err := store.UpdateVM(ctx, l.DB, row); err != nil {
		return row, err
	}
	return row, nil
}

// configureMovedGuest gives a guest that came to this host with its
// memory (a move, a moved memory snapshot) this host's identity in one
// call, through the agent's own guarded path (never a shell command: an
// in-process test agent would run it on the host): the clock, eth0 to
// mac and ip, and from now on only this host's key (the one it was
// saved or moved with is no longer trusted).
func (l *Local) configureMovedGuest(ctx context.Context, cl *vsockcli.Client, mac string, ip netip.Addr) error {
	n := l.guestNetwork(mac, ip)
	now := time.Now().UnixNano()
	if err := cl.Configure(ctx, proto.Configure{TimeUnixNano: &now, Network: &n, HostKeys: []string{l.hostKeyLine()}}); err != nil {
		return fmt.Errorf("move the guest's network: %w", err)
	}
	return nil
}

// guestNetwork is eth0's configuration for a guest of this host with mac
// and ip (a VM moved here with its memory, or live).
func (l *Local) guestNetwork(mac string, ip netip.Addr) proto.Network {
	n := proto.Network{MAC: mac, IP: netip.PrefixFrom(ip, l.cfg.Subnet.Bits()).String()}
	if l.cfg.Gateway.IsValid() {
		n.Gateway = l.cfg.Gateway.String()
	}
	if dns, err := netip.ParseAddr(l.cfg.DNS); err == nil {
		n.DNS = dns.String()
	}
	return n
}
