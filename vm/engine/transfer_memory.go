package engine

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/cpus"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// moveStateDir holds an instance's memory and device state while it is
// suspended for a move.
const moveStateDir = "move-state"

// NoteSuspended is the Note of an instance suspended for a move: it is
// recorded stopped, its memory saved; Resume runs it again.
const NoteSuspended = "suspended for a move: its memory is saved (resume continues it)"

// MemoryMover is an Engine that moves instances with their memory and
// snapshots between hosts: Local and nodeagent.Remote implement it.
//
// A move with memory: the target's AgentTrustKey; Suspend on the source
// (its agent told to accept that key too); ExportBundle on the source into
// ImportBundle on the target, which resumes it there; the source's copy is
// destroyed once the target's runs. A failure before that: the target's
// copy destroyed, Resume on the source.
type MemoryMover interface {
	// AgentTrustKey is the authorized_keys line of the key this host's
	// guest agents accept logins from.
	AgentTrustKey(ctx context.Context) (string, error)
	// PrepareImage makes image ref ready on this host (fetched, where
	// the host's catalogue fetches), so an import that follows does not
	// wait for it while the guest is suspended.
	PrepareImage(ctx context.Context, ref string) error
	// Suspend pauses running instance id, saves its memory and device
	// state on this host and stops its hypervisor: the instance is
	// recorded stopped with NoteSuspended until Resume, ExportBundle
	// (which ships the state) or Destroy. Its guest agent is first told to
	// accept trustKey ("" none) besides this host's key. Suspending a
	// suspended instance does nothing. A failure leaves it running.
	Suspend(ctx context.Context, id, trustKey string) error
	// Resume runs a suspended instance again from its saved memory (the
	// processes continue), then drops the saved state, and its agent
	// accepts only this host's key again. A running instance is resumed if
	// paused and otherwise left alone; a stopped one that is not suspended
	// is errs.FailedPrecondition.
	Resume(ctx context.Context, id string) (Instance, error)
	// ExportBundle writes a stopped or suspended instance's bundle to w:
	// its disk, its snapshots' disks and, if suspended, its saved state.
	// The instance is locked meanwhile and left as it was.
	ExportBundle(ctx context.Context, id string, w io.Writer) error
	// ImportBundle makes instance spec.ID from bundle r: its files, its
	// snapshots' records (same names and creation times), a fresh address
	// of this host. A bundle with memory resumes running, its guest moved
	// to the new MAC, address and route, its clock stepped, its agent
	// accepting only this host's key (hostname, machine-id and keys stay);
	// otherwise the instance is stopped, or booted with spec.Start. A
	// failure (a corrupt bundle included) removes everything that hangs
	// off spec.ID.
	ImportBundle(ctx context.Context, spec ImportSpec, r io.Reader, progress Progress) (Instance, error)
}

// BundlePeerImporter is a MemoryMover that imports a bundle written to
// its host straight from another host (node to node: the caller relays
// no byte), as PeerImporter does for disk streams.
type BundlePeerImporter interface {
	// ImportBundleFromPeer is ImportBundle of from's ExportBundle of
	// instance spec.ID, and the bundle's size in bytes. An error wrapping
	// ErrNoPeerPath left nothing on either host (relay it instead).
	ImportBundleFromPeer(ctx context.Context, spec ImportSpec, from Engine, progress Progress) (Instance, int64, error)
}

var _ MemoryMover = (*Local)(nil)

func (l *Local) moveState(id string) string { return filepath.Join(l.vmDir(id), moveStateDir) }

// A suspend for a move saves the memory without flushing it to stable
// storage first where the driver can (hypervisor.UnsyncedSaver): the
// flush of a few hundred MiB would lengthen the guest's downtime, and the
// saved files are read back (shipped, or resumed from) on this same boot
// of the host, from the page cache. The boot it was saved on is recorded
// beside it (moveBootSuffix), flushed before the save begins: after a
// reboot the saved memory may be torn, so it is dropped and the instance
// is stopped with its disk, as a running VM is after a power loss (it
// starts cold). A state saved without that record was flushed.

// moveBootSuffix names the file beside moveStateDir that holds the boot
// ID of an unflushed save (outside the directory: it is not shipped).
const moveBootSuffix = ".boot"

// bootID is this boot of the host, "" if unknown (tests replace it).
var bootID = func() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

// suspended reports whether instance id has saved memory from a suspend
// that may be used; an unflushed one from an earlier boot is removed
// (and the instance's note with it).
func (l *Local) suspended(ctx context.Context, id string) bool {
	state := l.moveState(id)
	if !exists(state) {
		return false
	}
	b, err := os.ReadFile(state + moveBootSuffix)
	if err != nil {
		return true // no record: flushed when saved
	}
	if now := bootID(); now != "" && strings.TrimSpace(string(b)) == now {
		return true
	}
	l.log.Warn("saved memory of a suspend dropped: the host restarted before it reached stable storage (the vm starts cold)", "vm_id", id)
	os.RemoveAll(state)
	os.Remove(state + moveBootSuffix)
	store.SetVMNote(context.WithoutCancel(ctx), l.DB, id, "", "")
	return false
}

// dropMoveState removes instance id's saved memory and its boot record.
func (l *Local) dropMoveState(id string) {
	l.discardKeptRAM(l.moveState(id))
	l.discardKeptRAM(l.moveState(id) + ".part")
	os.RemoveAll(l.moveState(id))
	os.RemoveAll(l.moveState(id) + ".part")
	os.Remove(l.moveState(id) + moveBootSuffix)
}

// saveForMove is the suspend's save into dir: unflushed where the driver
// can and this boot is known (its ID recorded, flushed, first), else
// SaveState.
func (l *Local) saveForMove(ctx context.Context, id string, h *hypervisor.Handle, dir string) error {
	us, ok := l.Driver.(hypervisor.UnsyncedSaver)
	boot := bootID()
	if !ok || boot == "" {
		return l.Driver.SaveState(ctx, h, dir)
	}
	if err := writeBytesSync(l.moveState(id)+moveBootSuffix, []byte(boot+"\n")); err != nil {
		return l.Driver.SaveState(ctx, h, dir)
	}
	return us.SaveStateUnsynced(ctx, h, dir)
}

func (l *Local) hostKeyLine() string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(l.HostKey.PublicKey())))
}

// AgentTrustKey implements MemoryMover.
func (l *Local) AgentTrustKey(ctx context.Context) (string, error) { return l.hostKeyLine(), nil }

// PrepareImage implements MemoryMover.
func (l *Local) PrepareImage(ctx context.Context, ref string) error {
	_, err := l.Images.Resolve(ctx, ref)
	return err
}

// Suspend implements MemoryMover.
func (l *Local) Suspend(ctx context.Context, id, trustKey string) error {
	if trustKey != "" {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(trustKey)); err != nil {
			return errs.New(errs.InvalidArgument, "suspend: bad trust key: %v", err)
		}
	}
	return l.withLock(ctx, id, func(v store.VM) error {
		if v.State == vm.Stopped && l.suspended(ctx, v.ID) {
			return nil
		}
		if v.State != vm.Running {
			return errs.New(errs.FailedPrecondition, "suspend vm %s: it is %s; only a running vm is suspended", v.Name, v.State)
		}
		if !l.Driver.Caps().MemorySnapshot {
			return errs.New(errs.FailedPrecondition, "the %s driver cannot save memory", l.Driver.Name())
		}
		h, _ := DecodeHandle(v.Handle)
		if h == nil {
			return errs.New(errs.FailedPrecondition, "vm %s has no hypervisor handle", v.Name)
		}
		if info, err := os.Stat(l.diskPath(v.ID)); err == nil {
			if err := l.checkFreeSpace("suspend vm "+v.Name, int64(v.MemoryMiB)<<20+info.Size()+ReserveBytes); err != nil {
				return err
			}
		}
		if trustKey != "" {
			if err := l.setAgentKeys(ctx, v, l.hostKeyLine(), trustKey); err != nil {
				return fmt.Errorf("suspend vm %s: %w", v.Name, err)
			}
		}
		// A running VM's saved state from an earlier, interrupted suspend is
		// stale.
		l.dropMoveState(v.ID)
		tmp := l.moveState(v.ID) + ".part"
		t0 := time.Now()
		// The VM stays paused after the save (the driver resumes it if the
		// save fails); its disk is flushed by then. After a pre-copy the
		// save keeps the RAM file and notes what changed since
		// (transfer_memory_precopy.go).
		save := l.saveForMove
		if pre, ok := l.precopy.takeOut(v.ID); ok {
			save = func(ctx context.Context, id string, h *hypervisor.Handle, dir string) error {
				return l.saveKeepRAM(ctx, id, h, dir, pre)
			}
		}
		if err := save(ctx, v.ID, h, tmp); err != nil {
			l.dropMoveState(v.ID)
			l.Driver.Resume(context.WithoutCancel(ctx), h)
			if trustKey != "" {
				l.setAgentKeys(context.WithoutCancel(ctx), v, l.hostKeyLine())
			}
			return fmt.Errorf("suspend vm %s: %w", v.Name, err)
		}
		if err := os.Rename(tmp, l.moveState(v.ID)); err != nil {
			l.dropMoveState(v.ID)
			l.Driver.Resume(context.WithoutCancel(ctx), h)
			return fmt.Errorf("suspend vm %s: %w", v.Name, err)
		}
		// From here the saved state is the VM.
		l.Driver.Kill(context.WithoutCancel(ctx), h)
		if _, err := l.markStopped(context.WithoutCancel(ctx), v); err != nil {
			return fmt.Errorf("suspend vm %s: %w", v.Name, err)
		}
		if err := store.SetVMNote(context.WithoutCancel(ctx), l.DB, v.ID, "", NoteSuspended); err != nil {
			return fmt.Errorf("suspend vm %s: %w", v.Name, err)
		}
		l.log.Info("vm suspended", "vm_id", v.ID, "vm", v.Name, "save_ms", time.Since(t0).Milliseconds())
		return nil
	})
}

// setAgentKeys tells v's guest agent to accept logins from keys only.
func (l *Local) setAgentKeys(ctx context.Context, v store.VM, keys ...string) error {
	cctx, cancel := context.WithTimeout(ctx, min(l.cfg.ReadyTimeout, 20*time.Second))
	defer cancel()
	cl, err := l.pooledAgent(cctx, v)
	if err != nil {
		return fmt.Errorf("guest agent: %w", err)
	}
	defer cl.Close()
	if err := cl.Configure(cctx, proto.Configure{HostKeys: keys}); err != nil {
		return fmt.Errorf("guest agent host keys: %w", err)
	}
	return nil
}

// Resume implements MemoryMover.
func (l *Local) Resume(ctx context.Context, id string) (Instance, error) {
	var out Instance
	err := l.withLock(ctx, id, func(v store.VM) error {
		state := l.moveState(v.ID)
		switch {
		case v.State == vm.Running || v.State == vm.Paused:
			// Its process is the VM (a suspend cut short before it stopped
			// it): a state saved meanwhile is stale.
			if h, _ := DecodeHandle(v.Handle); h != nil {
				if info, err := l.Driver.Info(ctx, h); err == nil && info.State == hypervisor.StatePaused {
					if err := l.Driver.Resume(ctx, h); err != nil {
						return fmt.Errorf("resume vm %s: %w", v.Name, err)
					}
				}
			}
			l.dropMoveState(v.ID)
		case v.State == vm.Stopped && l.suspended(ctx, v.ID):
			o, err := l.beginStartOp(ctx, v, "resume")
			if err != nil {
				return fmt.Errorf("resume vm %s: %w", v.Name, err)
			}
			nv, err := l.resumeMemory(ctx, o, v, state, nil)
			o.finish(ctx, err)
			if err != nil {
				return fmt.Errorf("resume vm %s: %w", v.Name, err)
			}
			v = nv
			l.dropMoveState(v.ID)
			v.Note = ""
			if err := store.SetVMNote(ctx, l.DB, v.ID, "", ""); err != nil {
				return fmt.Errorf("resume vm %s: %w", v.Name, err)
			}
		default:
			return errs.New(errs.FailedPrecondition, "resume vm %s: it is %s and not suspended", v.Name, v.State)
		}
		if err := l.setAgentKeys(ctx, v, l.hostKeyLine()); err != nil {
			l.log.Warn("resume: agent host keys", "vm_id", v.ID, "err", err)
		}
		out = InstanceOf(v)
		return nil
	})
	return out, err
}

// ExportBundle implements MemoryMover.
func (l *Local) ExportBundle(ctx context.Context, id string, w io.Writer) error {
	return l.ExportBundleFrom(ctx, id, 0, w)
}

// ExportBundleFrom implements BundleResumer.
func (l *Local) ExportBundleFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	defer cpus.Hold("memory export")() // CPU-heavy: the process gets its default Ps (internal/cpus)
	return l.withLock(ctx, id, func(v store.VM) error {
		if v.State != vm.Stopped {
			return errs.New(errs.FailedPrecondition, "export vm %s: it is %s; stop or suspend it first", v.Name, v.State)
		}
		snaps, err := store.ListSnapshots(ctx, l.DB, v.ID)
		if err != nil {
			return err
		}
		disks := []string{l.diskPath(v.ID)}
		for _, s := range snaps {
			disks = append(disks, filepath.Join(l.snapDir(v.ID, s.ID), snapDiskFile))
		}
		if err := l.detachTemplateLayer(ctx, v.Name, disks...); err != nil {
			return err
		}
		h := BundleHeader{ID: v.ID, Name: v.Name, Image: v.Image, CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskGiB: v.DiskGiB}
		dir := l.vmDir(v.ID)
		add := func(rel string) error {
			st, err := os.Stat(filepath.Join(dir, filepath.FromSlash(rel)))
			if err != nil {
				return err
			}
			h.Files = append(h.Files, BundleFile{Path: rel, Size: st.Size()})
			return nil
		}
		if err := add("disk.qcow2"); err != nil {
			return fmt.Errorf("export vm %s: %w", v.Name, err)
		}
		if l.suspended(ctx, v.ID) {
			h.Memory, h.AgentKey = true, v.AgentKey
			ents, err := os.ReadDir(l.moveState(v.ID))
			if err != nil {
				return err
			}
			for _, e := range ents {
				if e.Type().IsRegular() && stateFileRE().MatchString(e.Name()) {
					if err := add(path.Join(moveStateDir, e.Name())); err != nil {
						return err
					}
				}
			}
		}
		for _, s := range snaps {
			bs := BundleSnapshot{ID: s.ID, Name: s.Name, CreatedAt: s.CreatedAt}
			if err := add(path.Join("snapshots", s.ID, snapDiskFile)); err != nil {
				return fmt.Errorf("export vm %s: snapshot %s: %w", v.Name, s.Name, err)
			}
			if s.Memory && movableSnapshot(l.snapDir(v.ID, s.ID)) {
				bs.Memory = true
				if err := l.addSnapshotMemory(v.ID, s.ID, add); err != nil {
					return fmt.Errorf("export vm %s: snapshot %s: %w", v.Name, s.Name, err)
				}
			} else if s.Memory {
				h.Dropped = append(h.Dropped, s.Name)
			}
			h.Snapshots = append(h.Snapshots, bs)
		}
		err = WriteBundleFrom(w, h, off, func(rel string) (io.ReadCloser, error) {
			return os.Open(filepath.Join(dir, filepath.FromSlash(rel)))
		})
		if err != nil {
			return fmt.Errorf("export vm %s: %w", v.Name, err)
		}
		return nil
	})
}
