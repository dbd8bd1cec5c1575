package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/cpus"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// The target's side of a move with memory: ImportBundle, and the staged
// form of it (StageBundle, AdoptBundle, ResumeAdopted).

// ImportBundle implements MemoryMover.
func (l *Local) ImportBundle(ctx context.Context, spec ImportSpec, r io.Reader, progress Progress) (Instance, error) {
	defer cpus.Hold("memory import")() // CPU-heavy: the process gets its default Ps (internal/cpus)
	if !vm.IsID(spec.ID) {
		return Instance{}, errs.New(errs.InvalidArgument, "invalid vm id %q", spec.ID)
	}
	if err := vm.ValidName("vm", spec.Name); err != nil {
		return Instance{}, err
	}
	if spec.CopyOf != "" {
		return Instance{}, errs.New(errs.InvalidArgument, "import vm %s: a bundle is not copied", spec.Name)
	}
	br := bufio.NewReaderSize(r, maxDiskHeader)
	h, err := ReadBundleHeader(br)
	if err != nil {
		return Instance{}, err
	}
	if h.ID != spec.ID {
		return Instance{}, errs.New(errs.InvalidArgument, "import vm %s: the bundle carries vm %s", spec.ID, h.ID)
	}
	if err := vm.ValidResources(h.CPUs, h.MemoryMiB, h.DiskGiB); err != nil {
		return Instance{}, err
	}
	// A pre-copy not used by this bundle is of no more use.
	defer l.precopy.dropIn(spec.ID, nil)
	var fk hypervisor.Forker
	if h.Memory {
		var ok bool
		if fk, ok = l.Driver.(hypervisor.Forker); !ok || !l.Driver.Caps().MemorySnapshot {
			return Instance{}, errs.New(errs.FailedPrecondition, "import vm %s: the %s driver cannot resume a vm from its memory", spec.Name, l.Driver.Name())
		}
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(h.AgentKey)); err != nil {
			return Instance{}, errs.New(errs.InvalidArgument, "bundle: bad agent key: %v", err)
		}
	}
	progress.Say("image")
	img, err := l.Images.Resolve(ctx, h.Image)
	if err != nil {
		return Instance{}, errs.New(errs.FailedPrecondition, "import vm %s: image %s is not on this host (fetch it first): %v", spec.Name, h.Image, err)
	}
	row := store.VM{ID: spec.ID, Name: spec.Name, OwnerID: spec.Owner, Image: img.Ref, CPUs: h.CPUs,
		MemoryMiB: h.MemoryMiB, DiskGiB: h.DiskGiB, Port: 80}
	if h.Memory {
		row.AgentKey = h.AgentKey
	}
	return l.newVM(ctx, row, "import", progress, func(o *op, row store.VM) (store.VM, error) {
		progress.Say("disk")
		o.step(ctx, "disk", nil)
		dir := l.vmDir(row.ID)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return row, err
		}
		if err := ReadBundleFiles(br, h, dir); err != nil {
			return row, err
		}
		if h.Memory && bundleHasDelta(h) {
			if err := l.adoptPreCopy(row.ID, l.moveState(row.ID)); err != nil {
				return row, err
			}
		}
		if rb, ok := l.Disks.(Rebaser); ok {
			for _, f := range h.Files {
				if strings.HasSuffix(f.Path, ".qcow2") {
					if err := rb.SetBacking(ctx, filepath.Join(dir, filepath.FromSlash(f.Path)), img.Path, img.Format); err != nil {
						return row, err
					}
				}
			}
		}
		if len(h.Snapshots) > 0 {
			progress.Say("snapshots")
			err := l.DB.Tx(ctx, func(q store.Q) error {
				for _, s := range h.Snapshots {
					snap := store.Snapshot{ID: s.ID, VMID: row.ID, Name: s.Name, CreatedAt: s.CreatedAt, Memory: s.Memory,
						SizeBytes: dirSize(l.snapDir(row.ID, s.ID))}
					if err := store.InsertSnapshot(ctx, q, snap); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return row, err
			}
		}
		switch {
		case h.Memory:
			return l.resumeMoved(ctx, o, fk, row, img, progress)
		case spec.Start:
			v, cl, err := l.boot(ctx, o, row, progress)
			if err != nil {
				return v, err
			}
			cl.Close()
			return v, nil
		}
		row.State = vm.Stopped
		return row, store.UpdateVM(ctx, l.DB, row)
	})
}

// resumeMoved starts an imported instance from the memory state it
// brought and moves its guest onto this host: the new MAC, address and
// route, the clock, and this host's key only. The saved state is removed
// once it runs.
func (l *Local) resumeMoved(ctx context.Context, o *op, fk hypervisor.Forker, row store.VM, img Image, progress Progress) (store.VM, error) {
	var u undo
	defer u.run()
	state := l.moveState(row.ID)
	ip, run, err := l.attach(ctx, o, &u, row, progress, "restore memory")
	if err != nil {
		return row, err
	}
	start := time.Now()
	// A copy's restore: the MAC (and vsock CID) are this host's, not the
	// saved machine's; the guest is moved to them below.
	row, h, cl, restored, err := l.restoreCopyReady(ctx, o, &u, fk, row, l.spec(row, img, run, ip), state, l.agentConfig(row.AgentKey, nil), "restore memory", progress)
	if err != nil {
		return row, err
	}
	defer cl.Close()
	if row, err = l.settleMovedGuest(ctx, o, cl, row, ip, progress); err != nil {
		return row, err
	}
	// A pre-copied RAM file runs under the instance's own name now: its
	// first name (the state's kept RAM) goes, or it would outlive the
	// instance on this host's tmpfs.
	l.discardKeptRAM(state)
	os.RemoveAll(state)
	l.log.Info("vm resumed from a move", "vm_id", row.ID, "vm", row.Name, "pid", h.PID,
		"restore_ms", restored.Sub(start).Milliseconds(), "ready_ms", time.Since(start).Milliseconds())
	u = nil
	return row, nil
}

// Onto the host whose store also holds the control plane's row of the
// instance (see StageDisk and AdoptVM for the cold move): StageBundle
// writes the bundle into place without recording an instance,
// AdoptBundle makes the row this host's inside the caller's transaction
// (an address of this host, the agent key, the snapshots' records), and
// ResumeAdopted then resumes it from the memory it brought.

// bundleFile keeps a staged bundle's header until the instance resumes.
const bundleFile = "bundle.json"

// StageBundle writes bundle r into place as instance spec.ID's files
// (rebased onto this host's copy of its image) without recording an
// instance. An instance of this host with that ID, or files already
// there, is errs.AlreadyExists; on any failure what it wrote is removed.
// Destroy removes a staged bundle.
func (l *Local) StageBundle(ctx context.Context, spec ImportSpec, r io.Reader, progress Progress) error {
	defer cpus.Hold("memory stage")() // CPU-heavy: the process gets its default Ps (internal/cpus)
	if !vm.IsID(spec.ID) {
		return errs.New(errs.InvalidArgument, "invalid vm id %q", spec.ID)
	}
	br := bufio.NewReaderSize(r, maxDiskHeader)
	h, err := ReadBundleHeader(br)
	if err != nil {
		return err
	}
	if h.ID != spec.ID {
		return errs.New(errs.InvalidArgument, "import vm %s: the bundle carries vm %s", spec.ID, h.ID)
	}
	if h.Memory {
		if _, ok := l.Driver.(hypervisor.Forker); !ok || !l.Driver.Caps().MemorySnapshot {
			return errs.New(errs.FailedPrecondition, "import vm %s: the %s driver cannot resume a vm from its memory", spec.Name, l.Driver.Name())
		}
	}
	// A pre-copy not used by this bundle is of no more use.
	defer l.precopy.dropIn(spec.ID, nil)
	progress.Say("image")
	img, err := l.Images.Resolve(ctx, h.Image)
	if err != nil {
		return errs.New(errs.FailedPrecondition, "import vm %s: image %s is not on this host (fetch it first): %v", spec.Name, h.Image, err)
	}
	unlock, err := l.lockVM(ctx, spec.ID)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := store.GetLocalVMByID(ctx, l.DB, spec.ID); err == nil {
		return errs.New(errs.AlreadyExists, "vm %s is already on this host", spec.ID)
	}
	dir := l.vmDir(spec.ID)
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return err
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if os.IsExist(err) {
			return errs.New(errs.AlreadyExists, "import vm %s: files of it are already on this host", spec.ID)
		}
		return err
	}
	progress.Say("disk")
	err = func() error {
		if err := ReadBundleFiles(br, h, dir); err != nil {
			return err
		}
		if h.Memory && bundleHasDelta(h) {
			// It follows a pre-copy into this host: its RAM is that file,
			// brought up to date (ResumeAdopted resumes on it).
			if err := l.adoptPreCopy(spec.ID, l.moveState(spec.ID)); err != nil {
				return err
			}
		}
		if rb, ok := l.Disks.(Rebaser); ok {
			for _, f := range h.Files {
				if strings.HasSuffix(f.Path, ".qcow2") {
					if err := rb.SetBacking(ctx, filepath.Join(dir, filepath.FromSlash(f.Path)), img.Path, img.Format); err != nil {
						return err
					}
				}
			}
		}
		b, err := json.Marshal(h)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, bundleFile), b, 0o600)
	}()
	if err != nil {
		l.discardKeptRAM(l.moveState(spec.ID)) // an adopted pre-copy
		os.RemoveAll(dir)
		return l.diskFull(err)
	}
	return nil
}

// AdoptBundle makes row id of this store, recorded as another host's,
// this host's stopped instance with a fresh address of this host, the
// staged bundle's agent key and snapshots, inside the caller's
// transaction q; its bundle must have been staged (StageBundle).
func (l *Local) AdoptBundle(ctx context.Context, q store.Q, id string) error {
	b, err := os.ReadFile(filepath.Join(l.vmDir(id), bundleFile))
	if err != nil {
		return errs.New(errs.FailedPrecondition, "adopt vm %s: no staged bundle", id)
	}
	var h BundleHeader
	if err := json.Unmarshal(b, &h); err != nil {
		return fmt.Errorf("adopt vm %s: %w", id, err)
	}
	if err := l.AdoptVM(ctx, q, id); err != nil {
		return err
	}
	if h.Memory {
		v, err := store.GetVMByID(ctx, q, id)
		if err != nil {
			return err
		}
		v.AgentKey = h.AgentKey
		if err := store.UpdateVM(ctx, q, v); err != nil {
			return err
		}
	}
	for _, s := range h.Snapshots {
		snap := store.Snapshot{ID: s.ID, VMID: id, Name: s.Name, CreatedAt: s.CreatedAt, Memory: s.Memory, SizeBytes: dirSize(l.snapDir(id, s.ID))}
		if err := store.InsertSnapshot(ctx, q, snap); err != nil {
			return err
		}
	}
	return nil
}

// ResumeAdopted resumes an adopted instance from the memory its bundle
// brought (see resumeMoved), or boots it when it brought none and start
// is set. A failure leaves it stopped with its saved state, to try again.
func (l *Local) ResumeAdopted(ctx context.Context, id string, start bool, progress Progress) (Instance, error) {
	var out Instance
	err := l.withLock(ctx, id, func(v store.VM) error {
		if v.State != vm.Stopped {
			return errs.New(errs.FailedPrecondition, "resume vm %s: it is %s", v.Name, v.State)
		}
		if !exists(l.moveState(v.ID)) {
			os.Remove(filepath.Join(l.vmDir(v.ID), bundleFile))
			if !start {
				out = InstanceOf(v)
				return nil
			}
			var err error
			out, err = l.start(ctx, v, "start", progress)
			return err
		}
		fk, ok := l.Driver.(hypervisor.Forker)
		if !ok {
			return errs.New(errs.FailedPrecondition, "the %s driver cannot resume a vm from its memory", l.Driver.Name())
		}
		img, err := l.Images.Resolve(ctx, v.Image)
		if err != nil {
			return err
		}
		o, err := l.beginStartOp(ctx, v, "resume")
		if err != nil {
			return err
		}
		nv, err := l.resumeMoved(ctx, o, fk, v, img, progress)
		o.finish(ctx, err)
		if err != nil {
			l.markStopped(context.WithoutCancel(ctx), nv)
			return fmt.Errorf("resume vm %s: %w", v.Name, err)
		}
		os.Remove(filepath.Join(l.vmDir(v.ID), bundleFile))
		out = InstanceOf(nv)
		return nil
	})
	return out, err
}
