package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/cpus"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// Moving an instance with its memory and its snapshots (issue 15) ships a
// bundle: a disk stream of several files (see transfer.go). One line of
// JSON (BundleHeader) lists the files; then, for each file in that order,
// exactly its Size bytes and their checksum in the algorithm the header
// names (CRC32C in what this engine writes; version 2 bundles carry
// SHA-256, and are still read). The files are the
// instance's disk, each snapshot's disk and, for an instance suspended
// with its memory (Suspend), its saved memory and device state. A bundle
// whose bytes do not match a trailer, that ends early or names a file it
// may not is refused (errs.InvalidArgument) and nothing of it is kept.
//
// A moved snapshot keeps its name and creation time. A memory snapshot
// moves with its memory and its own agent key (files "snapshots/<ID>/
// memory/..." and "snapshots/<ID>/agent_key", BundleSnapshot.Memory; see
// snapshot_move.go); one taken without such a key (by an older engine)
// moves as its disk only, since its saved guest agent trusts only the key
// of the host it was taken on: the move says so (BundleHeader.Dropped).

// BundleStreamVersion is the bundle format this engine writes; it reads
// this one and version 2 (SHA-256 trailers, no Checksum).
const BundleStreamVersion = 3

// BundleHeader opens a bundle.
type BundleHeader struct {
	Version   int    `json:"version"` // BundleStreamVersion
	ID        string `json:"id"`
	Name      string `json:"name"`
	Image     string `json:"image"` // resolved reference, "os@version"
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskGiB   int    `json:"disk_gib"`
	// Memory says the bundle carries the suspended instance's memory and
	// device state (files under "move-state/"): it resumes on the target.
	Memory bool `json:"memory,omitempty"`
	// AgentKey is the guest agent's pinned key (authorized_keys form),
	// kept with Memory: the same guest answers on the target.
	AgentKey  string           `json:"agent_key,omitempty"`
	Snapshots []BundleSnapshot `json:"snapshots,omitempty"`
	// Dropped names the memory snapshots that move as disk snapshots.
	Dropped []string     `json:"dropped,omitempty"`
	Files   []BundleFile `json:"files"`
	// Checksum names the files' trailers' algorithm (as
	// DiskHeader.Checksum); version 2 bundles leave it out (SHA-256).
	Checksum string `json:"checksum,omitempty"`
	// Offset, in a resumed export (ExportBundleFrom) only, is where in
	// the bundle's body (what follows this line in a whole bundle) the
	// stream's bytes start. Importers read only whole bundles (Offset 0);
	// a resumed one is spliced in by ResumingReader
	// (transfer_memory_resume.go).
	Offset int64 `json:"offset,omitempty"`
}

// BundleSnapshot is a snapshot carried by a bundle (its disk is the file
// "snapshots/<ID>/disk.qcow2").
type BundleSnapshot struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// Memory: the snapshot's memory and agent key come with it; it
	// restores with its processes running on the target.
	Memory bool `json:"memory,omitempty"`
}

// BundleFile is one file of a bundle, its path relative to the
// instance's directory.
type BundleFile struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

// moveStateDir holds an instance's memory and device state while it is
// suspended for a move.
const moveStateDir = "move-state"

// NoteSuspended is the Note of an instance suspended for a move: it is
// recorded stopped, its memory saved; Resume runs it again.
const NoteSuspended = "suspended for a move: its memory is saved (resume continues it)"

var stateFileRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`) })

// checkBundle checks a header's fields and file names.
func checkBundle(h BundleHeader) error {
	bad := func(format string, a ...any) error {
		return errs.New(errs.InvalidArgument, "bundle: "+format, a...)
	}
	if h.Version != 2 && h.Version != BundleStreamVersion {
		return bad("version %d, this host reads 2 to %d", h.Version, BundleStreamVersion)
	}
	if err := streamChecksum(h.Version, 3, h.Checksum); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if !vm.IsID(h.ID) {
		return bad("bad vm id %q", h.ID)
	}
	snaps, memSnaps := map[string]bool{}, map[string]bool{}
	for _, s := range h.Snapshots {
		if !vm.IsID(s.ID) || snaps[s.ID] || vm.ValidSnapshotName(s.Name) != nil {
			return bad("bad snapshot %q (%q)", s.ID, s.Name)
		}
		snaps[s.ID] = true
		memSnaps[s.ID] = s.Memory
	}
	seen := map[string]bool{}
	disk := false
	for _, f := range h.Files {
		if f.Size < 0 || seen[f.Path] {
			return bad("bad file %q", f.Path)
		}
		seen[f.Path] = true
		parts := strings.Split(f.Path, "/")
		switch {
		case f.Path == "disk.qcow2":
			disk = true
		case len(parts) == 2 && parts[0] == moveStateDir && stateFileRE().MatchString(parts[1]) && h.Memory:
		case len(parts) == 3 && parts[0] == "snapshots" && snaps[parts[1]] && parts[2] == snapDiskFile:
		case len(parts) == 3 && parts[0] == "snapshots" && memSnaps[parts[1]] && parts[2] == snapKeyFile:
		case len(parts) == 4 && parts[0] == "snapshots" && memSnaps[parts[1]] && parts[2] == snapMemDir && stateFileRE().MatchString(parts[3]):
		default:
			return bad("file %q may not be in a bundle", f.Path)
		}
	}
	if !disk {
		return bad("no disk")
	}
	for id, mem := range memSnaps {
		if mem && (!seen["snapshots/"+id+"/"+snapKeyFile] || !seen["snapshots/"+id+"/"+snapDiskFile]) {
			return bad("memory snapshot %s without its disk or key", id)
		}
	}
	return nil
}

// WriteBundle writes h and then each of h.Files, read from open (a path
// relative to the instance's directory), with its checksum.
func WriteBundle(w io.Writer, h BundleHeader, open func(path string) (io.ReadCloser, error)) error {
	return WriteBundleFrom(w, h, 0, open)
}

// ReadBundleHeader reads and checks a bundle's header from br.
func ReadBundleHeader(br *bufio.Reader) (BundleHeader, error) {
	var h BundleHeader
	if err := readHeader(br, "bundle", &h); err != nil {
		return h, err
	}
	if h.Offset != 0 {
		return h, errs.New(errs.InvalidArgument, "bundle: a part from byte %d, not a whole bundle", h.Offset)
	}
	return h, checkBundle(h)
}

// ReadBundleFiles writes each file of h from br into dir (under its
// path, through a ".part" file renamed once its checksum matched).
func ReadBundleFiles(br *bufio.Reader, h BundleHeader, dir string) error {
	for _, f := range h.Files {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		out, err := os.OpenFile(p+".part", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		err = ReadDiskBody(br, DiskHeader{Size: f.Size, Checksum: h.Checksum}, out)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("bundle %s: %w", f.Path, err)
		}
		if err := os.Rename(p+".part", p); err != nil {
			return err
		}
	}
	return nil
}

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
		snaps, err := store.ListSnapshots(ctx, l.DB, v.ID)
		if err != nil {
			return err
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
