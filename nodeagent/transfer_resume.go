package nodeagent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// A dropped import stream resumes (import_disk with Resume): the node's
// import keeps its partial disk file and its running checksum
// (engine.ResumingReader) and, when its stream drops before the trailer,
// opens a new stream of the same kind under a fresh ID and says so to
// the caller with a streamResume step naming it and the offset it wants
// the stream from (engine.ResumeAt):
//
//   - fabric stream: the node has already subscribed to the new stream;
//     the caller writes the stream from that offset into it;
//   - direct (the control plane's connection): the caller dials a new
//     direct connection for the new ID, as for the first;
//   - node to node (Peer set): the node made a new single-use peerdisk
//     ticket for the same source certificate (To); the caller has the
//     source export from the offset to it (transfer_peer.go).
//
// The node waits for the new stream as for the first (parkWait), then
// reads on; after importResume's tries it fails and undoes itself.

// streamResume starts the progress step by which import_disk asks the
// caller for the rest of a dropped stream (JSON resumeReq follows). It
// never reaches the caller's progress.
const streamResume = "\x00stream-resume "

// streamBytes starts the progress step by which an import_disk with
// Meter says, at its end, how many bytes the whole stream had (however
// often it resumed). It never reaches the caller's progress.
const streamBytes = "\x00stream-bytes "

func parseStreamBytes(step string) (int64, bool) {
	if !strings.HasPrefix(step, streamBytes) {
		return 0, false
	}
	n, err := strconv.ParseInt(step[len(streamBytes):], 10, 64)
	return n, err == nil
}

// resumeReq is the node's request for the rest of a dropped stream.
type resumeReq struct {
	At      engine.ResumeAt `json:"at"`
	Attempt int             `json:"attempt"`
	Stream  string          `json:"stream"`
	Direct  bool            `json:"direct,omitempty"`
	To      *peerDial       `json:"to,omitempty"`
}

// importResume is how a node's import resumes dropped streams (tests
// shorten it).
var importResume = engine.ResumePolicy{Tries: 4, Backoff: 500 * time.Millisecond}

// resumeWait is how long a resuming import waits for its new stream.
var resumeWait = parkWait

// cutImport, when set (tests), drops the next import's first stream on
// the node after that many bytes.
var cutImport atomic.Int64

// resumingImport is an import's stream as the node reads it: the first
// stream, then each one it reopened. close closes them all.
type resumingImport struct {
	s        *server
	req      callRequest
	progress engine.Progress

	mu   sync.Mutex
	cur  func() // ends the current stream
	ends []func()
}

func (ri *resumingImport) track(end func()) {
	end = sync.OnceFunc(end)
	ri.mu.Lock()
	ri.cur = end
	ri.ends = append(ri.ends, end)
	ri.mu.Unlock()
}

func (ri *resumingImport) close() {
	ri.mu.Lock()
	ends := ri.ends
	ri.ends = nil
	ri.mu.Unlock()
	for _, end := range ends {
		end()
	}
}

// reopen implements engine.Reopen: the new stream, once the caller
// opened it.
func (ri *resumingImport) reopen(ctx context.Context, attempt int, at engine.ResumeAt) (io.Reader, error) {
	s, req := ri.s, ri.req
	ri.mu.Lock()
	if ri.cur != nil {
		ri.cur() // the dropped stream: its writer stops at once
	}
	ri.mu.Unlock()
	msg := resumeReq{At: at, Attempt: attempt, Stream: newToken()}
	var c net.Conn
	switch {
	case req.Peer != "":
		if s.cfg.Direct == nil {
			return nil, errs.New(errs.FailedPrecondition, "node %s has no direct listener", s.cfg.ID)
		}
		t, err := s.cfg.Direct.issueFor(kindPeerDisk, msg.Stream, req.Peer)
		if err != nil {
			return nil, err
		}
		msg.To = &peerDial{Addr: t.Addr, Cert: t.Cert, Ticket: t.Ticket}
	case req.Direct:
		msg.Direct = true
	default:
		st, err := newStream(s.cfg.Conn, streamIn(s.cfg.ID, msg.Stream), streamOut(s.cfg.ID, msg.Stream), "node:"+req.ID, "control")
		if err != nil {
			return nil, err
		}
		s.mu.Lock()
		s.streams[st] = true
		s.mu.Unlock()
		ri.track(func() { s.endStream(st) })
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = s.cfg.Conn.Flush(fctx)
		cancel()
		if err != nil {
			return nil, errs.New(errs.Unavailable, "resume disk stream: %v", err)
		}
		c = st
	}
	b, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	s.log.Warn("disk stream dropped: resuming", "vm_id", req.ID, "attempt", attempt, "offset", at.Offset, "taken", at.Taken, "stream", msg.Stream)
	ri.progress(streamResume + string(b))
	if c == nil {
		dc, done, err := s.cfg.Direct.takeDiskWithin(ctx, msg.Stream, resumeWait)
		if err != nil {
			return nil, err
		}
		ri.track(done)
		c = dc
	}
	return &idleStream{ctx: ctx, st: c}, nil
}

// parseResume reads a streamResume step.
func parseResume(step string) (resumeReq, bool) {
	var m resumeReq
	if !strings.HasPrefix(step, streamResume) {
		return m, false
	}
	if err := json.Unmarshal([]byte(step[len(streamResume):]), &m); err != nil || !tokenRE().MatchString(m.Stream) {
		return resumeReq{}, true
	}
	return m, true
}

// resumedLine is the caller's progress line for a resumption.
func resumedLine(m resumeReq) string {
	return fmt.Sprintf("transfer resumed at %d MiB (attempt %d of %d: the stream to the target dropped)", m.At.Taken>>20, m.Attempt, importResume.Tries)
}

var _ engine.ResumingImporter = (*Remote)(nil)

// ImportDiskResuming implements engine.ResumingImporter: src's stream is
// copied to the node while it imports, and written again from the
// node's offset, into a new stream, each time the node says its stream
// dropped. A src error other than a dropped stream cancels the import.
func (r *Remote) ImportDiskResuming(ctx context.Context, spec engine.ImportSpec, src engine.StreamSource, progress engine.Progress) (engine.Instance, error) {
	return r.importResuming(ctx, mImportDisk, spec, src, progress)
}

// importResuming is ImportDiskResuming of import method (import_disk,
// import_bundle).
func (r *Remote) importResuming(ctx context.Context, method string, spec engine.ImportSpec, src engine.StreamSource, progress engine.Progress) (engine.Instance, error) {
	sid := newToken()
	st, direct, err := r.openDisk(ctx, sid, spec.ID)
	if err != nil {
		return engine.Instance{}, err
	}
	ictx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu     sync.Mutex
		conns  = []net.Conn{st}
		srcErr error
		feeds  sync.WaitGroup
	)
	defer func() {
		cancel()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		feeds.Wait()
	}()
	feed := func(c net.Conn, at engine.ResumeAt) {
		feeds.Add(1)
		go func() {
			defer feeds.Done()
			err := src(ictx, at, c)
			if err == nil {
				return
			}
			c.Close() // the node sees the stream end at once
			if ictx.Err() == nil && !droppedStream(err) {
				mu.Lock()
				srcErr = err
				mu.Unlock()
				cancel()
			}
		}()
	}
	var once sync.Once
	p := func(step string) {
		if step == streamReady {
			once.Do(func() { feed(st, engine.ResumeAt{}) })
			return
		}
		m, ok := parseResume(step)
		if !ok {
			progress.Say(step)
			return
		}
		if m.Stream == "" {
			return // a bad request: the node times out waiting
		}
		r.diskResumed.Add(1)
		progress.Say(resumedLine(m))
		go func() {
			mu.Lock()
			for _, c := range conns {
				c.Close() // the dropped stream's writer stops
			}
			mu.Unlock()
			var c net.Conn
			var err error
			if m.Direct {
				if c, err = r.dialDirect(ictx, kindDisk, m.Stream); err == nil {
					r.diskDirect.Add(1)
					sc := &stallConn{Conn: c}
					sc.arm(diskStall)
					c = sc
				}
			} else {
				c, err = newStream(r.cfg.Conn, streamOut(r.cfg.ID, m.Stream), streamIn(r.cfg.ID, m.Stream), "control", "node:"+r.cfg.ID+"/"+spec.ID)
			}
			if err != nil {
				return // the node gives up waiting and asks again
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			feed(c, m.At)
		}()
	}
	inst, err := r.instance(ictx, method, callRequest{ID: spec.ID, Stream: sid, Import: &spec, Direct: direct, Resume: true}, p)
	mu.Lock()
	serr := srcErr
	mu.Unlock()
	if err != nil && serr != nil {
		return engine.Instance{}, serr // the stream ended because its source failed
	}
	return inst, err
}

// droppedStream reports whether err ends a stream that may be resumed
// (a connection's failure, not the instance's or the stream's).
func droppedStream(err error) bool {
	switch errs.ClassOf(err) {
	case nil, errs.Unavailable:
		return true
	}
	return false
}

// ResumeCount is how many dropped import streams r resumed.
func (r *Remote) ResumeCount() int64 { return r.diskResumed.Load() }
