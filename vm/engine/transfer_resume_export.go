package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// The exporting side of a resumed disk stream (the importing side is
// transfer_resume.go).

// DiskResumer is a Transferer whose export can start part-way: Local,
// nodeagent.Remote.
type DiskResumer interface {
	// ExportDiskFrom is ExportDisk from byte off of the disk: a stream
	// with header Offset off (see WriteDiskStreamFrom).
	ExportDiskFrom(ctx context.Context, id string, off int64, w io.Writer) error
}

// ResumePolicy is how often, and after how long, ExportResuming tries
// again after a dropped export stream.
type ResumePolicy struct {
	Tries   int           // resumed exports after the first (default 4)
	Backoff time.Duration // before the first; doubled each time (default 500 ms)
	// Resumed, if set, hears each resumption: the attempt (from 1), the
	// stream bytes already delivered and the error that ended the last.
	Resumed func(attempt int, delivered int64, err error)
}

// ExportResuming copies instance id's disk stream from src into w, as
// src.ExportDisk does, and when the export fails part-way for a reason
// other than the instance itself or w (a dropped stream: an Unavailable
// or an unclassified error) it resumes it with ExportDiskFrom at the last
// byte w took, so w receives one unbroken stream whose trailer (the
// checksum of the whole disk) the importer checks as usual. After
// p.Tries resumptions, or when src cannot resume, the last error is
// returned.
func ExportResuming(ctx context.Context, src Transferer, id string, w io.Writer, p ResumePolicy) error {
	return ExportResumingFrom(ctx, src, id, 0, w, p)
}

// ExportResumingFrom is ExportResuming of the stream ExportDiskFrom(off)
// writes (off 0: ExportDisk's): a target that took part of a stream
// before its own connection dropped asks for the rest with it.
func ExportResumingFrom(ctx context.Context, src Transferer, id string, off int64, w io.Writer, p ResumePolicy) error {
	if p.Tries == 0 {
		p.Tries = 4
	}
	if p.Backoff == 0 {
		p.Backoff = 500 * time.Millisecond
	}
	d := &delivered{w: w}
	r, ok := src.(DiskResumer)
	var err error
	switch {
	case off == 0:
		err = src.ExportDisk(ctx, id, d)
	case ok:
		err = r.ExportDiskFrom(ctx, id, off, d)
	default:
		return errs.New(errs.FailedPrecondition, "this host's engine does not resume disk streams")
	}
	start := off
	wait := p.Backoff
	for attempt := 1; err != nil && ok && attempt <= p.Tries && resumable(ctx, d, err); attempt++ {
		if p.Resumed != nil {
			p.Resumed(attempt, d.n, err)
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait *= 2
		// Before the whole header went: the stream again from its start,
		// less what went. After it: from the disk's next byte (or the
		// trailer's), less the new header.
		off, skip, headed := start, d.n, d.headLen > 0
		if headed {
			pos := d.head.Offset + d.n - d.headLen
			off = min(pos, d.head.Size)
			skip = pos - off // into the trailer
		}
		err = r.ExportDiskFrom(ctx, id, off, &splice{d: d, off: off, size: d.head.Size, headed: headed, inBody: !headed, skip: skip})
	}
	return err
}

// resumable reports whether an export that ended with err may be resumed.
func resumable(ctx context.Context, d *delivered, err error) bool {
	if ctx.Err() != nil || d.werr != nil {
		return false // cancelled, or the importer's side ended
	}
	switch errs.ClassOf(err) {
	case nil, errs.Unavailable:
		return true
	}
	return false
}

// delivered is w counting the bytes it took, reading the stream's header
// on the way.
type delivered struct {
	w       io.Writer
	n       int64
	werr    error
	line    []byte
	headLen int64 // the header line's length, once seen
	head    DiskHeader
}

func (d *delivered) Write(b []byte) (int, error) {
	if d.headLen == 0 && len(d.line) < maxDiskHeader {
		d.line = append(d.line, b...)
		if i := bytes.IndexByte(d.line, '\n'); i >= 0 {
			if err := json.Unmarshal(d.line[:i], &d.head); err == nil {
				d.headLen = int64(i + 1)
			}
			d.line = nil
		}
	}
	n, err := d.w.Write(b)
	d.n += int64(n)
	if err != nil {
		d.werr = err
	}
	return n, err
}

// splice takes a resumed stream (from off) and passes on only what d has
// not had: its header is checked against the first one and dropped, then
// skip more bytes (of the trailer) are dropped.
type splice struct {
	d      *delivered
	off    int64
	size   int64
	headed bool  // d has had the whole first header: the new one is dropped
	inBody bool  // past the new header (or keeping it: !headed)
	skip   int64 // bytes to drop after that
	line   []byte
}

func (s *splice) Write(b []byte) (int, error) {
	n := len(b)
	if !s.inBody {
		s.line = append(s.line, b...)
		i := bytes.IndexByte(s.line, '\n')
		if i < 0 {
			if len(s.line) > maxDiskHeader {
				return 0, errs.New(errs.InvalidArgument, "resumed disk stream: header too long")
			}
			return n, nil
		}
		var h DiskHeader
		if err := json.Unmarshal(s.line[:i], &h); err != nil {
			return 0, errs.New(errs.InvalidArgument, "resumed disk stream: bad header: %v", err)
		}
		if s.headed && (h.Offset != s.off || h.Size != s.size) {
			return 0, errs.New(errs.InvalidArgument, "resumed disk stream: from %d of %d bytes, want from %d of %d (the disk changed)", h.Offset, h.Size, s.off, s.size)
		}
		s.inBody = true
		b = s.line[i+1:]
		s.line = nil
	}
	if s.skip > 0 {
		k := min(s.skip, int64(len(b)))
		s.skip -= k
		b = b[k:]
	}
	if len(b) > 0 {
		if _, err := s.d.Write(b); err != nil {
			return 0, err
		}
	}
	return n, nil
}
