package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/cpus"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/jail"
)

// Moving an instance's disk between hosts: the Transferer contract and
// Local's side of it. The disk stream's format is in transfer_stream.go,
// resuming a dropped export in transfer_resume_export.go and a dropped
// import in transfer_resume.go.

// ErrNoPeerPath is a PeerImporter's answer when there is no direct path
// between the two hosts: nothing was made on either, and the caller
// relays the disk stream itself instead.
var ErrNoPeerPath = errors.New("no direct host-to-host path")

// PeerImporter is a Transferer that imports a disk stream written
// straight from another host's engine, the bytes not crossing the caller
// (nodeagent.Remote, node to node).
type PeerImporter interface {
	// ImportDiskFromPeer is ImportDisk of the stream from's ExportDisk
	// of instance spec.ID writes, with the stream's size in bytes. An
	// error wrapping ErrNoPeerPath left nothing on either host.
	ImportDiskFromPeer(ctx context.Context, spec ImportSpec, from Engine, progress Progress) (Instance, int64, error)
}

// Transferer is an Engine that ships instances' disks between hosts: both
// Local and nodeagent.Remote implement it.
type Transferer interface {
	// ExportDisk writes a stopped instance's disk stream to w (the
	// instance is locked meanwhile and left as it was). A running
	// instance is errs.FailedPrecondition; one with snapshots too (they
	// are not shipped yet).
	ExportDisk(ctx context.Context, id string, w io.Writer) error
	// ImportDisk makes instance spec.ID from the disk stream r: the disk
	// rebased onto this host's copy of the stream's image, a fresh
	// address of this host, stopped, or booted with spec.Start. An image
	// this host lacks is errs.FailedPrecondition. A failure (a corrupt
	// stream included) removes everything that hangs off spec.ID.
	ImportDisk(ctx context.Context, spec ImportSpec, r io.Reader, progress Progress) (Instance, error)
}

// ImportSpec names the instance an import makes; the rest comes from the
// stream's header, whose ID must be spec.ID.
type ImportSpec struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Owner string `json:"owner,omitempty"`
	Start bool   `json:"start,omitempty"`
	// CopyOf makes a copy of the stream's instance (whose ID is CopyOf)
	// rather than the instance itself: it boots (Start is implied) with an
	// identity of its own, as Create with CopyFrom, and AuthorizedKeys.
	CopyOf         string   `json:"copy_of,omitempty"`
	AuthorizedKeys []string `json:"authorized_keys,omitempty"`
}

// Rebaser is Disks that can point a qcow2 disk at another backing file
// without touching its data (HostDisks). Imports use it when Disks has it.
type Rebaser interface {
	SetBacking(ctx context.Context, path, backing, backingFormat string) error
}

var (
	_ Transferer  = (*Local)(nil)
	_ DiskResumer = (*Local)(nil)
)

// ExportDisk implements Transferer.
func (l *Local) ExportDisk(ctx context.Context, id string, w io.Writer) error {
	return l.ExportDiskFrom(ctx, id, 0, w)
}

// ExportDiskFrom implements DiskResumer.
func (l *Local) ExportDiskFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	defer cpus.Hold("disk export")() // CPU-heavy: the process gets its default Ps (internal/cpus)
	return l.withLock(ctx, id, func(v store.VM) error {
		if v.State != vm.Stopped {
			return errs.New(errs.FailedPrecondition, "export vm %s: it is %s; stop it first", v.Name, v.State)
		}
		snaps, err := store.ListSnapshots(ctx, l.DB, v.ID)
		if err != nil {
			return err
		}
		if len(snaps) > 0 {
			return errs.New(errs.FailedPrecondition, "export vm %s: it has %d snapshots; moving snapshots is not supported yet (delete them first)", v.Name, len(snaps))
		}
		if err := l.detachTemplateLayer(ctx, v.Name, l.diskPath(v.ID)); err != nil {
			return err
		}
		f, err := os.Open(l.diskPath(v.ID))
		if err != nil {
			return fmt.Errorf("export vm %s: %w", v.Name, err)
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		h := DiskHeader{ID: v.ID, Name: v.Name, Image: v.Image, CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskGiB: v.DiskGiB, Size: st.Size()}
		if off == 0 {
			err = writeDiskStream(w, h, newDirectReader(f), DirectChunk)
		} else {
			err = WriteDiskStreamFrom(w, h, f, off)
		}
		if err != nil {
			return fmt.Errorf("export vm %s: %w", v.Name, err)
		}
		return nil
	})
}

// templateBacking is the warm template disk the qcow2 disk at path is
// an overlay of (read from its header, as the template disk sweep reads
// chains), "" when it is not one or not a qcow2 file (tests' stand-ins).
// Such a disk is an instance's made from a template before its disk
// became a copy of the template's (createwarm.go).
func (l *Local) templateBacking(path string) string {
	b, err := jail.BackingFile(path)
	if err != nil || b == "" {
		return ""
	}
	if rel, err := filepath.Rel(l.templatesDir(), b); err == nil && !strings.HasPrefix(rel, "..") {
		return b
	}
	return ""
}

// notTemplateBacked refuses a live move of instance v when its disk is an
// overlay of a warm template's disk: QEMU mirrors the disk's top layer only,
// onto an overlay of the target's image, so the template's layer would be
// missing there and the guest's file system broken. Other moves detach
// the disk from the template first (detachTemplateLayer).
func (l *Local) notTemplateBacked(v store.VM) error {
	if t := l.templateBacking(l.diskPath(v.ID)); t != "" {
		return errs.New(errs.FailedPrecondition,
			"vm %s cannot move live: its disk is an overlay of warm template disk %s, which a live move does not carry (a vm created from a template before its disk was a copy); move it without --live, which copies that layer into its disk first",
			v.Name, t)
	}
	return nil
}

// detachTemplateLayer makes each of instance name's disks at paths that
// is an overlay of a warm template's disk an overlay of the template's
// image again, before the disk leaves this host: the template's layer is
// copied into it (disk.Rebase, the guest's view unchanged), so the disk
// ships as one file that a target rebases onto its own copy of the image.
// The disks must not be in use (a stopped or suspended instance's).
func (l *Local) detachTemplateLayer(ctx context.Context, name string, paths ...string) error {
	for _, p := range paths {
		t := l.templateBacking(p)
		if t == "" {
			continue
		}
		tinfo, err := disk.Info(ctx, t)
		if err != nil {
			return fmt.Errorf("vm %s: read warm template disk %s: %w", name, t, err)
		}
		if tinfo.Backing == "" {
			return errs.New(errs.FailedPrecondition, "vm %s: warm template disk %s under its disk has no image below it", name, t)
		}
		start := time.Now()
		if err := disk.Rebase(ctx, p, tinfo.Backing, tinfo.BackingFmt); err != nil {
			return fmt.Errorf("vm %s: copy its warm template's layer into its disk: %w", name, l.diskFull(err))
		}
		l.log.Info("disk detached from its warm template", "vm", name, "disk", p, "template_disk", t, "image", tinfo.Backing, "ms", time.Since(start).Milliseconds())
	}
	return nil
}

// ImportDisk implements Transferer.
func (l *Local) ImportDisk(ctx context.Context, spec ImportSpec, r io.Reader, progress Progress) (Instance, error) {
	defer cpus.Hold("disk import")() // CPU-heavy: the process gets its default Ps (internal/cpus)
	if !vm.IsID(spec.ID) {
		return Instance{}, errs.New(errs.InvalidArgument, "invalid vm id %q", spec.ID)
	}
	if err := vm.ValidName("vm", spec.Name); err != nil {
		return Instance{}, err
	}
	br := bufio.NewReaderSize(r, maxDiskHeader)
	h, err := ReadDiskHeader(br)
	if err != nil {
		return Instance{}, err
	}
	if h.ID != spec.ID && (spec.CopyOf == "" || h.ID != spec.CopyOf) {
		return Instance{}, errs.New(errs.InvalidArgument, "import vm %s: the stream carries vm %s", spec.ID, h.ID)
	}
	if err := vm.ValidResources(h.CPUs, h.MemoryMiB, h.DiskGiB); err != nil {
		return Instance{}, err
	}
	progress.Say("image")
	img, err := l.Images.Resolve(ctx, h.Image)
	if err != nil {
		return Instance{}, errs.New(errs.FailedPrecondition, "import vm %s: image %s is not on this host (fetch it first): %v", spec.Name, h.Image, err)
	}
	row := store.VM{ID: spec.ID, Name: spec.Name, OwnerID: spec.Owner, Image: img.Ref, CPUs: h.CPUs,
		MemoryMiB: h.MemoryMiB, DiskGiB: h.DiskGiB, Port: 80}
	return l.newVM(ctx, row, "import", progress, func(o *op, row store.VM) (store.VM, error) {
		progress.Say("disk")
		o.step(ctx, "disk", nil)
		if err := os.MkdirAll(l.vmDir(row.ID), 0o700); err != nil {
			return row, err
		}
		part := l.diskPath(row.ID) + ".part"
		f, err := os.OpenFile(part, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return row, err
		}
		err = readDiskFile(br, h, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			if rb, ok := l.Disks.(Rebaser); ok {
				err = rb.SetBacking(ctx, part, img.Path, img.Format)
			}
		}
		if err == nil {
			err = os.Rename(part, l.diskPath(row.ID))
		}
		if err == nil {
			err = syncDir(l.vmDir(row.ID))
		}
		if err != nil {
			return row, err
		}
		if spec.Start || spec.CopyOf != "" {
			v, cl, err := l.boot(ctx, o, row, progress)
			if err != nil {
				return v, err
			}
			cl.Close()
			if spec.CopyOf != "" {
				return l.newIdentity(ctx, v, spec.AuthorizedKeys, progress)
			}
			return v, nil
		}
		row.State = vm.Stopped
		return row, store.UpdateVM(ctx, l.DB, row)
	})
}

// StageDisk writes the disk stream r into place as instance spec.ID's disk
// (rebased onto this host's copy of its image) without recording an
// instance: for a move onto the host whose store also holds the control
// plane's row of the instance, which AdoptVM then makes this host's. An
// instance of this host with that ID, or files already there, is
// errs.AlreadyExists; on any failure what StageDisk wrote is removed.
// Destroy removes a staged disk.
func (l *Local) StageDisk(ctx context.Context, spec ImportSpec, r io.Reader, progress Progress) error {
	defer cpus.Hold("disk stage")() // CPU-heavy: the process gets its default Ps (internal/cpus)
	if !vm.IsID(spec.ID) {
		return errs.New(errs.InvalidArgument, "invalid vm id %q", spec.ID)
	}
	br := bufio.NewReaderSize(r, maxDiskHeader)
	h, err := ReadDiskHeader(br)
	if err != nil {
		return err
	}
	if h.ID != spec.ID {
		return errs.New(errs.InvalidArgument, "import vm %s: the stream carries vm %s", spec.ID, h.ID)
	}
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
	if err := os.Mkdir(l.vmDir(spec.ID), 0o700); err != nil {
		if os.IsExist(err) {
			return errs.New(errs.AlreadyExists, "import vm %s: files of it are already on this host", spec.ID)
		}
		if err := os.MkdirAll(filepath.Dir(l.vmDir(spec.ID)), 0o700); err != nil {
			return err
		}
		if err := os.Mkdir(l.vmDir(spec.ID), 0o700); err != nil {
			return err
		}
	}
	progress.Say("disk")
	err = func() error {
		part := l.diskPath(spec.ID) + ".part"
		f, err := os.OpenFile(part, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		err = readDiskFile(br, h, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			if rb, ok := l.Disks.(Rebaser); ok {
				err = rb.SetBacking(ctx, part, img.Path, img.Format)
			}
		}
		if err == nil {
			err = os.Rename(part, l.diskPath(spec.ID))
		}
		if err == nil {
			err = syncDir(l.vmDir(spec.ID))
		}
		return err
	}()
	if err != nil {
		os.RemoveAll(l.vmDir(spec.ID))
		return l.diskFull(err)
	}
	return nil
}

// AdoptVM makes row id of this store, recorded as another host's, this
// host's stopped instance with a fresh address of this host, inside the
// caller's transaction q; its disk must have been staged (StageDisk).
func (l *Local) AdoptVM(ctx context.Context, q store.Q, id string) error {
	if !fileExists(l.diskPath(id)) {
		return errs.New(errs.FailedPrecondition, "adopt vm %s: no staged disk", id)
	}
	ip, mac, cid, err := l.allocate(ctx, q, id)
	if err != nil {
		return err
	}
	return store.AdoptVM(ctx, q, id, ip.String(), mac, cid)
}
