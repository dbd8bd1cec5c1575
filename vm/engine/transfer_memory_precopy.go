package engine

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// A move with memory, pre-copied (see precopy_ram.go for the formats):
// before the suspend the source's ExportPreCopy writes the running VM's
// RAM file into the target's ImportPreCopy, which keeps it as a RAM file
// of the driver's (hypervisor.RAMKeeper). The source remembers the sums
// of what it sent; its next Suspend of that VM (within preCopyTTL) saves
// the device state only, keeps the RAM file, and writes the chunks that
// changed since into the saved state (move-state/ram.delta), so the
// bundle carries those instead of all of the RAM. The target's
// ImportBundle applies the delta to the pre-copied file, checks the whole
// RAM against the source's sums, and resumes on it.
//
// Nothing is durable about a pre-copy: both ends keep it in memory. A
// pre-copy that fails, is dropped (DropPreCopy, Destroy) or lost (a
// restart; a file left so is swept with the other stale RAM files) only
// costs the move its shortcut: a bundle whose delta follows a pre-copy
// the target does not hold fails its import, and the move rolls back.
// While suspended, the source's state is its device state and its kept
// RAM file: Resume runs it again on that file.

// PreCopier is a MemoryMover that pre-copies a running instance's RAM
// to the target before the suspend (Local; nodeagent.Remote node to node).
type PreCopier interface {
	// ExportPreCopy writes running instance id's RAM to w while it runs,
	// and remembers what it sent: the instance's next Suspend (within ten
	// minutes) ships only what changed since. errs.FailedPrecondition:
	// the instance's RAM is not a file of its own (move without).
	ExportPreCopy(ctx context.Context, id string, w io.Writer) error
	// ImportPreCopy keeps pre-copy r of instance id on this host for the
	// bundle that follows (ImportBundle); an instance id of this host is
	// errs.AlreadyExists. It is dropped by that import, DropPreCopy,
	// Destroy of id, or after ten minutes.
	ImportPreCopy(ctx context.Context, id string, r io.Reader) error
	// DropPreCopy forgets instance id's pre-copy on this host, either
	// end's. Idempotent.
	DropPreCopy(ctx context.Context, id string) error
}

var _ PreCopier = (*Local)(nil)

// preCopyTTL bounds how long either end keeps a pre-copy.
const preCopyTTL = 10 * time.Minute

// preCopies are a Local's pre-copies, sent (out) and received (in).
type preCopies struct {
	mu  sync.Mutex
	out map[string]preOut
	in  map[string]*preIn
}

// preOut is what a pre-copy sent: sums once it went whole (done), and
// its records, which a resumed stream continues from.
type preOut struct {
	token string
	sums  []chunkSum
	log   []preRec
	done  bool
	at    time.Time
}

// preIn is a pre-copy received: a RAM file of the driver's, kept open
// (so no sweep of stale RAM files takes it).
type preIn struct {
	token, path string
	f           *os.File
	sums        []chunkSum
	timer       *time.Timer
}

func (p *preIn) discard() {
	p.timer.Stop()
	p.f.Close()
	os.Remove(p.path)
}

func (pc *preCopies) putOut(id string, o preOut) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.out == nil {
		pc.out = map[string]preOut{}
	}
	pc.out[id] = o
}

// takeOut returns and forgets the pre-copy sent of instance id, if one
// younger than preCopyTTL went whole.
func (pc *preCopies) takeOut(id string) (preOut, bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	o, ok := pc.out[id]
	delete(pc.out, id)
	return o, ok && o.done && time.Since(o.at) < preCopyTTL
}

// getOut returns the pre-copy sent of instance id (whole or not), if one
// younger than preCopyTTL is there.
func (pc *preCopies) getOut(id string) (preOut, bool) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	o, ok := pc.out[id]
	return o, ok && time.Since(o.at) < preCopyTTL
}

func (pc *preCopies) putIn(id string, p *preIn) {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	if pc.in == nil {
		pc.in = map[string]*preIn{}
	}
	if old := pc.in[id]; old != nil {
		old.discard()
	}
	pc.in[id] = p
	p.timer = time.AfterFunc(preCopyTTL, func() { pc.dropIn(id, p) })
}

// takeIn returns and forgets the pre-copy received of instance id.
func (pc *preCopies) takeIn(id string) *preIn {
	pc.mu.Lock()
	defer pc.mu.Unlock()
	p := pc.in[id]
	delete(pc.in, id)
	if p != nil {
		p.timer.Stop()
	}
	return p
}

// dropIn discards the pre-copy received of instance id (only p, if p is
// not nil).
func (pc *preCopies) dropIn(id string, p *preIn) {
	pc.mu.Lock()
	cur := pc.in[id]
	if cur == nil || (p != nil && cur != p) {
		pc.mu.Unlock()
		return
	}
	delete(pc.in, id)
	pc.mu.Unlock()
	cur.discard()
}

// ExportPreCopy implements PreCopier.
func (l *Local) ExportPreCopy(ctx context.Context, id string, w io.Writer) error {
	return l.exportPreCopy(ctx, id, 0, w)
}

// ExportPreCopyFrom implements PreCopyResumer.
func (l *Local) ExportPreCopyFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	if off < 1 {
		return errs.New(errs.InvalidArgument, "resume pre-copy: offset %d (records held plus one)", off)
	}
	return l.exportPreCopy(ctx, id, off, w)
}

// exportPreCopy writes a pre-copy of instance id (off 0), or the rest of
// the last one after off-1 records.
func (l *Local) exportPreCopy(ctx context.Context, id string, off int64, w io.Writer) error {
	rk, ok := l.Driver.(hypervisor.RAMKeeper)
	if !ok {
		return errs.New(errs.FailedPrecondition, "the %s driver keeps no ram files to pre-copy", l.Driver.Name())
	}
	return l.withLock(ctx, id, func(v store.VM) error {
		if v.State != vm.Running {
			return errs.New(errs.FailedPrecondition, "pre-copy vm %s: it is %s", v.Name, v.State)
		}
		h, _ := DecodeHandle(v.Handle)
		if h == nil {
			return errs.New(errs.FailedPrecondition, "vm %s has no hypervisor handle", v.Name)
		}
		src, size, err := openRAM(l.Driver, rk, h)
		if err != nil {
			return fmt.Errorf("pre-copy vm %s: %w", v.Name, err)
		}
		defer src.Close()
		var log []preRec
		hd := PreCopyHeader{Version: PreCopyStreamVersion, ID: v.ID, Size: size, Chunk: preCopyChunk}
		if off == 0 {
			var rnd [12]byte
			rand.Read(rnd[:])
			hd.Token = hex.EncodeToString(rnd[:])
		} else {
			o, ok := l.precopy.getOut(v.ID)
			if !ok || off-1 > int64(len(o.log)) {
				return errs.New(errs.FailedPrecondition, "resume pre-copy vm %s: no pre-copy of it to resume from record %d", v.Name, off-1)
			}
			hd.Token, hd.Resumed, hd.From = o.token, true, off-1
			log = o.log[:off-1]
		}
		t0 := time.Now()
		sums, log, err := writePreCopy(w, hd, src, log)
		// What went, whole or not: the target may ask for the rest.
		l.precopy.putOut(v.ID, preOut{token: hd.Token, sums: sums, log: log, done: err == nil, at: time.Now()})
		if err != nil {
			return fmt.Errorf("pre-copy vm %s: %w", v.Name, err)
		}
		l.log.Info("vm ram pre-copied", "vm_id", v.ID, "vm", v.Name, "mib", size>>20, "resumed_from", hd.From, "duration_ms", time.Since(t0).Milliseconds())
		return nil
	})
}

// openRAM opens running VM h's RAM for a pre-copy: its RAM file, or
// where it has none the driver's reader (a warm clone's,
// hypervisor.RAMOpener).
func openRAM(d hypervisor.Driver, rk hypervisor.RAMKeeper, h *hypervisor.Handle) (hypervisor.RAMReader, int64, error) {
	p, size, err := rk.RAMFile(h)
	if err == nil {
		f, err := os.Open(p)
		if err != nil {
			return nil, 0, err
		}
		return fileRAM{f}, size, nil
	}
	if ro, ok := d.(hypervisor.RAMOpener); ok && errors.Is(err, errs.FailedPrecondition) {
		r, size, oerr := ro.OpenRAM(h)
		if oerr == nil {
			return r, size, nil
		}
		return nil, 0, fmt.Errorf("%w; %w", err, oerr)
	}
	return nil, 0, err
}

// ImportPreCopy implements PreCopier.
func (l *Local) ImportPreCopy(ctx context.Context, id string, r io.Reader) error {
	return l.ImportPreCopyResuming(ctx, id, r, nil, ResumePolicy{})
}

// ImportPreCopyResuming implements PreCopyResumer.
func (l *Local) ImportPreCopyResuming(ctx context.Context, id string, r io.Reader, reopen Reopen, pol ResumePolicy) error {
	if !vm.IsID(id) {
		return errs.New(errs.InvalidArgument, "invalid vm id %q", id)
	}
	rk, ok := l.Driver.(hypervisor.RAMKeeper)
	if !ok {
		return errs.New(errs.FailedPrecondition, "the %s driver keeps no ram files to pre-copy into", l.Driver.Name())
	}
	if _, err := store.GetLocalVMByID(ctx, l.DB, id); err == nil {
		return errs.New(errs.AlreadyExists, "vm %s is already on this host", id)
	}
	br := bufio.NewReaderSize(r, 1<<20)
	h, err := readPreCopyHeader(br)
	if err != nil {
		return err
	}
	if h.ID != id || h.Resumed {
		return errs.New(errs.InvalidArgument, "pre-copy of vm %s: the stream carries vm %s (resumed %v)", id, h.ID, h.Resumed)
	}
	p, err := rk.NewRAMFile(h.Size)
	if err != nil {
		return fmt.Errorf("pre-copy of vm %s: %w", id, err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		os.Remove(p)
		return err
	}
	pr := newPreReader(h, f)
	if err := pr.readResuming(ctx, br, reopen, pol); err != nil {
		f.Close()
		os.Remove(p)
		return fmt.Errorf("pre-copy of vm %s: %w", id, err)
	}
	l.precopy.putIn(id, &preIn{token: h.Token, path: p, f: f, sums: pr.sums})
	return nil
}

// readResuming reads the body of the pre-copy in br; when its stream
// drops (resumableRead), it asks reopen for the rest after the records
// it holds (ResumeAt.Offset: that count plus one), at most pol.Tries
// times, waiting pol.Backoff (doubled each time) first.
func (p *preReader) readResuming(ctx context.Context, br *bufio.Reader, reopen Reopen, pol ResumePolicy) error {
	if pol.Tries == 0 {
		pol.Tries = 4
	}
	if pol.Backoff == 0 {
		pol.Backoff = 500 * time.Millisecond
	}
	for tries := 0; ; {
		err := p.read(br)
		if err == nil {
			return nil
		}
		if reopen == nil || !resumableRead(ctx, err) {
			return err
		}
		if tries >= pol.Tries {
			return fmt.Errorf("pre-copy stream dropped %d times, last after %d records: %w", tries+1, p.recs, err)
		}
		tries++
		if pol.Resumed != nil {
			pol.Resumed(tries, p.recs, err)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(pol.Backoff << (tries - 1)):
		}
		nr, rerr := reopen(ctx, tries, ResumeAt{Offset: p.recs + 1, Headed: true})
		if rerr != nil {
			br = bufio.NewReader(errReader{rerr}) // counts as a try
			continue
		}
		br = bufio.NewReaderSize(nr, 1<<20)
		if err := p.resumed(br); err != nil {
			if !resumableRead(ctx, err) {
				return err
			}
			br = bufio.NewReader(errReader{err})
		}
	}
}

// DropPreCopy implements PreCopier.
func (l *Local) DropPreCopy(ctx context.Context, id string) error {
	l.precopy.takeOut(id)
	l.precopy.dropIn(id, nil)
	return nil
}

// saveKeepRAM is the suspend's save after a pre-copy: the device state
// and the kept RAM file (hypervisor.RAMKeeper) into dir, and the RAM's
// delta against what the pre-copy sent. On failure the VM is paused or
// running as the driver left it, and dir may hold part of the state (the
// caller drops it).
func (l *Local) saveKeepRAM(ctx context.Context, id string, h *hypervisor.Handle, dir string, pre preOut) error {
	rk, ok := l.Driver.(hypervisor.RAMKeeper)
	if !ok {
		return errs.New(errs.FailedPrecondition, "the %s driver keeps no ram files", l.Driver.Name())
	}
	if boot := bootID(); boot != "" {
		if err := writeBytesSync(l.moveState(id)+moveBootSuffix, []byte(boot+"\n")); err != nil {
			return err
		}
	}
	t0 := time.Now()
	if err := rk.SaveStateKeepRAM(ctx, h, dir); err != nil {
		return err
	}
	saved := time.Now()
	ram := rk.StateRAM(dir)
	if ram == "" {
		return fmt.Errorf("the saved state in %s keeps no ram file", dir)
	}
	sent, err := writeRAMDelta(ram, filepath.Join(dir, ramDeltaFile), pre.token, pre.sums)
	if err != nil {
		return fmt.Errorf("ram delta: %w", err)
	}
	l.log.Info("vm saved after a pre-copy", "vm_id", id, "save_ms", saved.Sub(t0).Milliseconds(),
		"delta_ms", time.Since(saved).Milliseconds(), "delta_chunks", sent, "chunks", len(pre.sums))
	return nil
}

// discardKeptRAM removes the RAM file the state in dir keeps outside it
// (a kept RAM file, a fork's copy). Idempotent.
func (l *Local) discardKeptRAM(dir string) {
	if d, ok := l.Driver.(copyDiscarder); ok {
		if err := d.DiscardCopy(dir); err != nil {
			l.log.Warn("discard kept ram", "dir", dir, "err", err)
		}
	}
}

// bundleHasDelta reports whether bundle h carries a RAM delta.
func bundleHasDelta(h BundleHeader) bool {
	for _, f := range h.Files {
		if f.Path == path.Join(moveStateDir, ramDeltaFile) {
			return true
		}
	}
	return false
}

// adoptPreCopy brings the pre-copy of instance id up to date with the
// delta in its imported state dir, checks the whole RAM, and makes it the
// state's RAM. On failure the pre-copy's file is gone.
func (l *Local) adoptPreCopy(id, dir string) error {
	p := l.precopy.takeIn(id)
	if p == nil {
		return errs.New(errs.FailedPrecondition, "import vm %s: its bundle follows a pre-copy this host does not hold", id)
	}
	defer p.f.Close()
	rk, ok := l.Driver.(hypervisor.RAMKeeper)
	if !ok {
		os.Remove(p.path)
		return errs.New(errs.FailedPrecondition, "the %s driver keeps no ram files", l.Driver.Name())
	}
	t0 := time.Now()
	delta := filepath.Join(dir, ramDeltaFile)
	err := applyRAMDelta(delta, p.path, p.token, p.sums)
	if err == nil {
		err = rk.AdoptRAM(dir, p.path)
	}
	if err != nil {
		os.Remove(p.path)
		return fmt.Errorf("import vm %s: %w", id, err)
	}
	os.Remove(delta)
	l.log.Info("pre-copied ram brought up to date", "vm_id", id, "duration_ms", time.Since(t0).Milliseconds())
	return nil
}

// PreCopyResumer is a PreCopier whose pre-copy streams resume after a
// drop (Local; nodeagent.Remote's peer pre-copy uses it on both nodes).
type PreCopyResumer interface {
	PreCopier
	// ExportPreCopyFrom writes the rest of instance id's last pre-copy
	// (whole or cut) for a target that holds off-1 of its records
	// (ResumeAt.Offset as ImportPreCopyResuming asks it), and remembers
	// what it sent as ExportPreCopy does. errs.FailedPrecondition: no
	// such pre-copy on this host (its target must start again).
	ExportPreCopyFrom(ctx context.Context, id string, off int64, w io.Writer) error
	// ImportPreCopyResuming is ImportPreCopy of r; when r drops before
	// the pre-copy's end, reopen is asked for the rest (ExportPreCopyFrom
	// from ResumeAt.Offset), at most pol.Tries times; then it fails and
	// keeps nothing.
	ImportPreCopyResuming(ctx context.Context, id string, r io.Reader, reopen Reopen, pol ResumePolicy) error
}

var _ PreCopyResumer = (*Local)(nil)

// PreCopyImporter is an engine of another host (nodeagent.Remote) that
// keeps a pre-copy this host writes (the control plane's own host as
// the source: its PreCopyResumer's export feeds src).
type PreCopyImporter interface {
	// ImportPreCopyFrom has this engine's host keep the pre-copy of
	// instance id that src writes (from ResumeAt{}: ExportPreCopy; from
	// an offset: ExportPreCopyFrom, each time the stream dropped), and
	// returns the bytes src wrote.
	ImportPreCopyFrom(ctx context.Context, id string, src StreamSource, progress Progress) (int64, error)
	// DropPreCopy is PreCopier's, on that host.
	DropPreCopy(ctx context.Context, id string) error
}

// PreCopyExporter is an engine of another host (nodeagent.Remote) whose
// pre-copy this host reads: into the control plane's own host, which
// imports it with its PreCopyResumer.
type PreCopyExporter interface {
	// ExportPreCopyFrom is PreCopyResumer's on that host, and off 0 is a
	// fresh pre-copy (ExportPreCopy).
	ExportPreCopyFrom(ctx context.Context, id string, off int64, w io.Writer) error
	// DropPreCopy is PreCopier's, on that host.
	DropPreCopy(ctx context.Context, id string) error
}

// PreCopyPeer is an engine of another host (nodeagent.Remote) that takes
// a pre-copy straight from a third host, node to node: the caller relays
// no byte.
type PreCopyPeer interface {
	// PreCopyFromPeer has this engine's host keep the pre-copy of running
	// instance id written by from's host (ExportPreCopy), and returns its
	// size in bytes. An error wrapping ErrNoPeerPath made nothing.
	PreCopyFromPeer(ctx context.Context, id string, from Engine, progress Progress) (int64, error)
	// DropPreCopy is PreCopier's, on that host.
	DropPreCopy(ctx context.Context, id string) error
}
