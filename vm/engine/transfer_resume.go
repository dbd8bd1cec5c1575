package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
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
	head    DiskHeader
	tries   int
}

// NewResumingReader reads r, resuming it with reopen (nil: never).
func NewResumingReader(ctx context.Context, r io.Reader, reopen Reopen, p ResumePolicy) *ResumingReader {
	if p.Tries == 0 {
		p.Tries = 4
	}
	if p.Backoff == 0 {
		p.Backoff = 500 * time.Millisecond
	}
	return &ResumingReader{ctx: ctx, cur: r, reopen: reopen, policy: p}
}

// Resumes is how many times the stream was reopened.
func (r *ResumingReader) Resumes() int { return r.tries }

// Taken is how many bytes of the stream were read.
func (r *ResumingReader) Taken() int64 { return r.n }

// complete reports whether the whole stream was read.
func (r *ResumingReader) complete() bool {
	if r.headLen == 0 {
		return false
	}
	sum, err := newChecksum(r.head.Checksum)
	if err != nil {
		return false
	}
	return r.n >= r.headLen+r.head.Size-r.head.Offset+int64(sum.Size())
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
			pos := r.head.Offset + r.n - r.headLen
			at.Offset = min(pos, r.head.Size)
			skip = pos - at.Offset // into the trailer
		}
		nr, rerr := r.reopen(r.ctx, r.tries, at)
		if rerr != nil {
			// Counts as a try; the next Read of the failed reader
			// fails again and asks once more.
			r.cur = errReader{rerr}
			continue
		}
		r.cur = &resumedStream{br: bufio.NewReaderSize(nr, maxDiskHeader), headed: at.Headed, at: at.Offset, want: r.head, skip: skip}
	}
}

// account reads the stream's header on the way.
func (r *ResumingReader) account(b []byte) {
	if r.headLen == 0 && len(r.line) < maxDiskHeader {
		r.line = append(r.line, b...)
		if i := bytes.IndexByte(r.line, '\n'); i >= 0 {
			if err := json.Unmarshal(r.line[:i], &r.head); err == nil {
				r.headLen = int64(i + 1)
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
	want   DiskHeader
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
			var h DiskHeader
			if err := json.Unmarshal(line, &h); err != nil {
				return 0, errs.New(errs.InvalidArgument, "resumed disk stream: bad header: %v", err)
			}
			if h.Version != DiskStreamVersion || h.Offset != s.at || h.Size != s.want.Size || h.ID != s.want.ID {
				return 0, errs.New(errs.InvalidArgument, "resumed disk stream: vm %s from %d of %d bytes (version %d), want vm %s from %d of %d (the disk changed)",
					h.ID, h.Offset, h.Size, h.Version, s.want.ID, s.at, s.want.Size)
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
