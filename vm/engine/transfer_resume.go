package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// The importing side of a resumed disk stream. A target whose connection
// drops part-way keeps its import running: the partial disk file stays
// open and the stream's checksum keeps the bytes summed so far, so the
// import asks (Reopen) for the rest of the stream from the last byte it
// took and reads on as if nothing happened; the trailer it checks at the
// end still covers the whole disk. The reopened stream is what
// ExportDiskFrom writes from that byte of the disk; ResumingReader drops
// its header (after checking it continues the same disk) and whatever of
// the trailer it already had.

// ResumeAt is where a target asks a dropped disk stream to go on from.
type ResumeAt struct {
	// Offset is the byte of the disk the new stream starts at: the
	// argument of ExportDiskFrom.
	Offset int64 `json:"offset"`
	// Taken is how many bytes of the whole stream (header, disk,
	// trailer) the target has: for progress that does not count twice.
	Taken int64 `json:"taken"`
	// Headed: the target had the whole header of the first stream, so it
	// drops the new stream's header (Taken counts the first one's).
	Headed bool `json:"headed,omitempty"`
}

// Reopen opens a dropped disk stream again from at.Offset of the disk:
// the bytes ExportDiskFrom(at.Offset) writes. The attempt counts from 1.
type Reopen func(ctx context.Context, attempt int, at ResumeAt) (io.Reader, error)

// ResumingReader is a disk stream to import, read from a connection that
// may drop: when a read fails before the whole stream (header, Size
// bytes, trailer) came, for a reason other than ctx or a bad stream
// (errs.InvalidArgument and the like), it waits (Policy's backoff) and
// reads on from a stream Reopen gives for the next byte, at most
// Policy.Tries times. Not safe for concurrent reads.
type ResumingReader struct {
	ctx    context.Context
	cur    io.Reader
	reopen Reopen
	policy ResumePolicy

	n       int64 // bytes of the whole stream given out
	line    []byte
	headLen int64
	format  streamFormat
	body    int64 // bytes after the first stream's header, once seen
	tries   int
}

// NewResumingReader reads r, resuming it with reopen (nil: never).
func NewResumingReader(ctx context.Context, r io.Reader, reopen Reopen, p ResumePolicy) *ResumingReader {
	return newResumingReader(ctx, r, reopen, p, &diskFormat{})
}

func newResumingReader(ctx context.Context, r io.Reader, reopen Reopen, p ResumePolicy, f streamFormat) *ResumingReader {
	if p.Tries == 0 {
		p.Tries = 4
	}
	if p.Backoff == 0 {
		p.Backoff = 500 * time.Millisecond
	}
	return &ResumingReader{ctx: ctx, cur: r, reopen: reopen, policy: p, format: f}
}

// Resumes is how many times the stream was reopened.
func (r *ResumingReader) Resumes() int { return r.tries }

// Taken is how many bytes of the stream were read.
func (r *ResumingReader) Taken() int64 { return r.n }

// complete reports whether the whole stream was read.
func (r *ResumingReader) complete() bool {
	return r.headLen > 0 && r.n >= r.headLen+r.body
}

func (r *ResumingReader) Read(p []byte) (int, error) {
	for {
		n, err := r.cur.Read(p)
		if n > 0 {
			r.account(p[:n])
			return n, nil // err, if any, comes again on the next Read
		}
		if err == nil {
			continue
		}
		if r.complete() || r.reopen == nil || !resumableRead(r.ctx, err) {
			return 0, err
		}
		if r.tries >= r.policy.Tries {
			return 0, fmt.Errorf("disk stream dropped %d times, last after %d bytes: %w", r.tries+1, r.n, err)
		}
		r.tries++
		if r.policy.Resumed != nil {
			r.policy.Resumed(r.tries, r.n, err)
		}
		select {
		case <-r.ctx.Done():
			return 0, err
		case <-time.After(r.policy.Backoff << (r.tries - 1)):
		}
		at := ResumeAt{Taken: r.n, Headed: r.headLen > 0}
		skip := r.n
		if at.Headed {
			at.Offset, skip = r.format.at(r.n - r.headLen)
		}
		nr, rerr := r.reopen(r.ctx, r.tries, at)
		if rerr != nil {
			// Counts as a try; the next Read of the failed reader
			// fails again and asks once more.
			r.cur = errReader{rerr}
			continue
		}
		r.cur = &resumedStream{br: bufio.NewReaderSize(nr, maxDiskHeader), headed: at.Headed, at: at.Offset, format: r.format, skip: skip}
	}
}

// account reads the stream's header on the way.
func (r *ResumingReader) account(b []byte) {
	if r.headLen == 0 && len(r.line) < maxDiskHeader {
		r.line = append(r.line, b...)
		if i := bytes.IndexByte(r.line, '\n'); i >= 0 {
			if body, ok := r.format.head(r.line[:i]); ok {
				r.headLen, r.body = int64(i+1), body
			}
			r.line = nil
		}
	}
	r.n += int64(len(b))
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// resumableRead reports whether a read that failed with err may be
// resumed: a dropped connection (an early end, a network error, an
// Unavailable), not a cancelled ctx or a stream that is wrong.
func resumableRead(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	switch errs.ClassOf(err) {
	case nil, errs.Unavailable:
		return true
	}
	return false
}

// resumedStream is a reopened stream less what the reader already had:
// its header (checked to continue the same disk from at) when headed,
// then skip bytes.
type resumedStream struct {
	br     *bufio.Reader
	headed bool
	at     int64
	format streamFormat
	skip   int64
	ready  bool
}

func (s *resumedStream) Read(p []byte) (int, error) {
	if !s.ready {
		if s.headed {
			line, err := s.br.ReadSlice('\n')
			if err == bufio.ErrBufferFull {
				return 0, errs.New(errs.InvalidArgument, "resumed disk stream: header too long")
			}
			if err != nil {
				return 0, errs.New(errs.Unavailable, "resumed disk stream: no header: %v", err) // it dropped again
			}
			if err := s.format.check(line, s.at); err != nil {
				return 0, err
			}
		}
		if s.skip > 0 {
			k, err := s.br.Discard(int(s.skip))
			s.skip -= int64(k)
			if err != nil {
				return 0, err
			}
		}
		s.ready = true
	}
	return s.br.Read(p)
}

// streamFormat is what a ResumingReader knows of the kind of stream it
// reads: a disk stream (diskFormat) or a bundle (bundleFormat).
type streamFormat interface {
	// head reads the first stream's header line (without its newline):
	// how many bytes follow it in that stream; !ok if it is no header.
	head(line []byte) (body int64, ok bool)
	// at is where to reopen the stream after pos bytes that followed
	// the first stream's header: the offset to ask for and how many
	// bytes after the new stream's header to drop.
	at(pos int64) (off, skip int64)
	// check checks a reopened stream's header line: it continues the
	// first stream from off (errs.InvalidArgument otherwise).
	check(line []byte, off int64) error
}

// diskFormat is a disk stream's streamFormat: reopened from a byte of the
// disk (ExportDiskFrom), or from its end when the trailer was cut.
type diskFormat struct{ h DiskHeader }

func (f *diskFormat) head(line []byte) (int64, bool) {
	if err := json.Unmarshal(line, &f.h); err != nil {
		return 0, false
	}
	sum, err := newChecksum(f.h.Checksum)
	if err != nil {
		return math.MaxInt64, true // never complete: the importer refuses it
	}
	return f.h.Size - f.h.Offset + int64(sum.Size()), true
}

func (f *diskFormat) at(pos int64) (int64, int64) {
	p := f.h.Offset + pos
	off := min(p, f.h.Size)
	return off, p - off // into the trailer
}

func (f *diskFormat) check(line []byte, off int64) error {
	var h DiskHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return errs.New(errs.InvalidArgument, "resumed disk stream: bad header: %v", err)
	}
	if h.Version != DiskStreamVersion || h.Offset != off || h.Size != f.h.Size || h.ID != f.h.ID {
		return errs.New(errs.InvalidArgument, "resumed disk stream: vm %s from %d of %d bytes (version %d), want vm %s from %d of %d (the disk changed)",
			h.ID, h.Offset, h.Size, h.Version, f.h.ID, off, f.h.Size)
	}
	return nil
}

// StreamSource writes a disk stream from at.Offset of the disk into w, as
// ExportDiskFrom does: what a ResumingImporter asks again when its
// connection to the target dropped.
type StreamSource func(ctx context.Context, at ResumeAt, w io.Writer) error

// ResumingImporter is a Transferer whose import reaches its host over a
// connection that may drop (nodeagent.Remote): the target keeps what it
// took and asks src for the rest (ResumingReader on its side).
type ResumingImporter interface {
	// ImportDiskResuming is ImportDisk of the stream src writes from
	// ResumeAt{} (the whole stream), asking src again from the target's
	// offset each time the connection drops (bounded; then the import
	// fails and undoes itself as ImportDisk's does).
	ImportDiskResuming(ctx context.Context, spec ImportSpec, src StreamSource, progress Progress) (Instance, error)
}
