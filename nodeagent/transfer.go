package nodeagent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/vm/engine"
)

// Disk streams (engine.Transferer) ride the direct path where there is
// one (transfer_direct.go), a stream like the agent's otherwise (see
// stream): export_disk has the node write an instance's disk stream into
// it and close it; import_disk has the node read one from it, the caller
// writing only once the node said streamReady (a progress step), so no
// frame goes out before the node subscribed.

// streamReady is the progress step by which import_disk tells the caller
// to start writing. It never reaches the caller's progress.
const streamReady = "\x00stream-ready"

var _ engine.Transferer = (*Remote)(nil)

// ExportDisk implements engine.Transferer: the node's disk stream is
// copied into w as it arrives.
func (r *Remote) ExportDisk(ctx context.Context, id string, w io.Writer) error {
	return r.ExportDiskFrom(ctx, id, 0, w)
}

var _ engine.DiskResumer = (*Remote)(nil)

// ExportDiskFrom implements engine.DiskResumer.
func (r *Remote) ExportDiskFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	sid := newToken()
	st, direct, err := r.openDisk(ctx, sid, id)
	if err != nil {
		return err
	}
	defer st.Close()
	var src io.Reader = st
	if n := r.cutExport.Swap(0); n > 0 {
		src = &cutReader{c: st, left: n}
	}
	copied := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(w, fill{src}, make([]byte, engine.DiskStreamBuffer))
		if err != nil {
			st.Close() // the node's writes fail at once
		}
		copied <- err
	}()
	if err := r.call(ctx, mExportDisk, callRequest{ID: id, Stream: sid, Direct: direct, Offset: off}, nil, nil); err != nil {
		st.Close()
		select {
		case cerr := <-copied:
			if cerr != nil && errs.ClassOf(err) == nil {
				return cerr // the stream broke here first
			}
		case <-time.After(time.Second): // w blocks: its side's error is its own
		}
		return err
	}
	select {
	case err := <-copied:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ImportDisk implements engine.Transferer: rd is copied to the node while
// it imports.
func (r *Remote) ImportDisk(ctx context.Context, spec engine.ImportSpec, rd io.Reader, progress engine.Progress) (engine.Instance, error) {
	sid := newToken()
	st, direct, err := r.openDisk(ctx, sid, spec.ID)
	if err != nil {
		return engine.Instance{}, err
	}
	defer st.Close()
	var once sync.Once
	p := func(step string) {
		if step == streamReady {
			once.Do(func() { go io.CopyBuffer(st, rd, make([]byte, engine.DiskStreamBuffer)) })
			return
		}
		progress.Say(step)
	}
	return r.instance(ctx, mImportDisk, callRequest{ID: spec.ID, Stream: sid, Import: &spec, Direct: direct}, p)
}

// openDisk opens the caller's end of disk stream sid (of instance id): a
// direct connection when the node has the direct path (direct reports
// it), a fabric stream otherwise.
func (r *Remote) openDisk(ctx context.Context, sid, id string) (c net.Conn, direct bool, err error) {
	c, err = r.dialDirect(ctx, kindDisk, sid)
	if err == nil {
		r.diskDirect.Add(1)
		sc := &stallConn{Conn: c} // transfer_direct.go
		sc.arm(diskStall)
		return sc, true, nil
	}
	var nd *errNoDirect
	if !errors.As(err, &nd) {
		return nil, false, err
	}
	st, err := newStream(r.cfg.Conn, streamOut(r.cfg.ID, sid), streamIn(r.cfg.ID, sid), "control", "node:"+r.cfg.ID+"/"+id)
	if err != nil {
		return nil, false, err
	}
	r.diskNATS.Add(1)
	return st, false, nil
}

// transferStream opens the node's end of stream req.Stream: the parked
// direct connection (req.Direct) or a fabric stream. end closes it.
func (s *server) transferStream(ctx context.Context, req callRequest) (t engine.Transferer, c net.Conn, end func(), err error) {
	t, ok := s.cfg.Engine.(engine.Transferer)
	if !ok {
		return nil, nil, nil, errs.New(errs.FailedPrecondition, "this node's engine does not ship disks")
	}
	if !tokenRE().MatchString(req.Stream) {
		return nil, nil, nil, errs.New(errs.InvalidArgument, "disk stream: bad stream id")
	}
	if req.Direct {
		if s.cfg.Direct == nil {
			return nil, nil, nil, errs.New(errs.FailedPrecondition, "node %s has no direct listener", s.cfg.ID)
		}
		c, done, err := s.cfg.Direct.takeDisk(ctx, req.Stream)
		if err != nil {
			return nil, nil, nil, err
		}
		// A cancelled call (mCancel, mCancelMoves) ends a transfer blocked
		// on its stream at once.
		stop := context.AfterFunc(ctx, func() { c.Close() })
		return t, c, func() { stop(); done() }, nil
	}
	st, err := newStream(s.cfg.Conn, streamIn(s.cfg.ID, req.Stream), streamOut(s.cfg.ID, req.Stream), "node:"+req.ID, "control")
	if err != nil {
		return nil, nil, nil, err
	}
	s.mu.Lock()
	s.streams[st] = true
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { st.Close() })
	return t, st, func() { stop(); s.endStream(st) }, nil
}

func (s *server) endStream(st *stream) {
	st.Close()
	s.mu.Lock()
	delete(s.streams, st)
	s.mu.Unlock()
}

func (s *server) exportDisk(ctx context.Context, req callRequest) error {
	t, st, end, err := s.transferStream(ctx, req)
	if err != nil {
		return err
	}
	defer end()
	w := &idleStream{ctx: ctx, st: st, pauseAfter: pauseAfter}
	if req.Offset != 0 {
		r, ok := t.(engine.DiskResumer)
		if !ok {
			return errs.New(errs.FailedPrecondition, "this node's engine does not resume disk streams")
		}
		return r.ExportDiskFrom(ctx, req.ID, req.Offset, w)
	}
	return t.ExportDisk(ctx, req.ID, w)
}

// cutReader reads from c until left bytes went, then closes c and fails:
// a dropped stream, for tests (Remote.cutExport).
type cutReader struct {
	c    io.ReadCloser
	left int64
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		c.c.Close()
		return 0, errs.New(errs.Unavailable, "disk stream dropped (test)")
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.c.Read(p)
	c.left -= int64(n)
	return n, err
}

func (s *server) importDisk(ctx context.Context, req callRequest, progress engine.Progress) (engine.Instance, error) {
	if req.Import == nil {
		return engine.Instance{}, errs.New(errs.InvalidArgument, "import_disk: missing argument")
	}
	t, st, end, err := s.transferStream(ctx, req)
	if err != nil {
		return engine.Instance{}, err
	}
	defer func() { end() }()
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = s.cfg.Conn.Flush(fctx)
	cancel()
	if err != nil {
		return engine.Instance{}, errs.New(errs.Unavailable, "import disk: %v", err)
	}
	progress(streamReady)
	disk := false
	p := func(step string) {
		if disk && step != "disk" {
			disk = false
			movepause.At(ctx, movepause.Imported) // test only: the disk is in place
		}
		disk = disk || step == "disk"
		progress(step)
	}
	var r io.Reader = &idleStream{ctx: ctx, st: st}
	if n := cutImport.Swap(0); n > 0 {
		r = &cutReader{c: st, left: n} // test only: a dropped stream
	}
	if req.Resume {
		end = sync.OnceFunc(end) // and when the stream drops
		ri := &resumingImport{s: s, req: req, progress: progress, cur: end}
		defer ri.close()
		r = engine.NewResumingReader(ctx, r, ri.reopen, importResume)
	}
	if !req.Meter {
		return t.ImportDisk(ctx, *req.Import, r, p)
	}
	m := &byteMeter{r: r, say: progress, start: time.Now()}
	inst, err := t.ImportDisk(ctx, *req.Import, m, p)
	if err == nil {
		m.line(time.Now())
		progress(streamBytes + strconv.FormatInt(m.n, 10))
	}
	return inst, err
}

// byteMeter says "transfer N/M MiB, R MiB/s" on say at most once a second
// while a disk stream is read (M from the stream's header line, when it
// is one).
type byteMeter struct {
	r      io.Reader
	say    engine.Progress
	start  time.Time
	said   time.Time // of the last line
	n      int64
	total  int64
	head   []byte
	headOK bool
}

func (m *byteMeter) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	m.n += int64(n)
	if !m.headOK && n > 0 {
		m.head = append(m.head, p[:n]...)
		if i := bytes.IndexByte(m.head, '\n'); i >= 0 || len(m.head) > 64<<10 {
			var h engine.DiskHeader
			if i >= 0 && json.Unmarshal(m.head[:i], &h) == nil {
				m.total = h.Size
			}
			m.head, m.headOK = nil, true
		}
	}
	if now := time.Now(); now.Sub(m.said) >= time.Second {
		m.line(now)
	}
	return n, err
}

// line says how far the stream got at now.
func (m *byteMeter) line(now time.Time) {
	m.said = now
	const mib = 1 << 20
	rate := float64(m.n) / mib / max(now.Sub(m.start).Seconds(), 1e-3)
	if m.total > 0 {
		m.say(fmt.Sprintf("transfer %d/%d MiB, %.0f MiB/s", min(m.n, m.total)/mib, m.total/mib, rate))
	} else {
		m.say(fmt.Sprintf("transfer %d MiB, %.0f MiB/s", m.n/mib, rate))
	}
}

// transferIdle is how long a disk stream may carry nothing before the
// node gives up on it: its peer (the control plane, relaying the other
// node's end) died, and the import or export must end and undo itself
// rather than hold the instance's lock for ever.
const transferIdle = 30 * time.Second

// pauseAfter is the number of bytes an export writes before the test-only
// movepause.Transfer step (mid-transfer).
const pauseAfter = 64 << 10

// idleStream is a node's end of a disk stream with an idle deadline on
// each read and write.
type idleStream struct {
	ctx        context.Context
	st         net.Conn
	pauseAfter int64  // > 0: pause (test only) once this many bytes are written
	pauseStep  string // the movepause step there; "" is movepause.Transfer
	written    int64

	readSet, writeSet time.Time // when the deadlines were last moved
}

func (i *idleStream) Read(p []byte) (int, error) {
	// The deadline moves at most once a second: a TLS connection reads
	// a 16 KiB record at a time, and each move costs a timer update.
	if now := time.Now(); now.Sub(i.readSet) > time.Second {
		i.st.SetReadDeadline(now.Add(transferIdle))
		i.readSet = now
	}
	return i.st.Read(p)
}

// fill reads until p is full or the reader ends: a TLS connection gives
// one 16 KiB record per Read, and a disk stream is best moved in large
// chunks. Only for a reader whose writer closes at the stream's end (the
// node closes an export's connection).
type fill struct{ r io.Reader }

func (f fill) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := f.r.Read(p[n:])
		n += m
		if err != nil {
			if n > 0 && err == io.EOF {
				return n, nil // EOF again on the next Read
			}
			return n, err
		}
	}
	return n, nil
}

func (i *idleStream) Write(p []byte) (int, error) {
	if i.pauseAfter > 0 && i.written >= i.pauseAfter {
		i.pauseAfter = 0
		step := i.pauseStep
		if step == "" {
			step = movepause.Transfer
		}
		movepause.At(i.ctx, step)
	}
	if now := time.Now(); now.Sub(i.writeSet) > time.Second {
		i.st.SetWriteDeadline(now.Add(transferIdle))
		i.writeSet = now
	}
	n, err := i.st.Write(p)
	i.written += int64(n)
	return n, err
}
