package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"

	"github.com/minionsdev/minions/internal/errs"
)

// A dropped bundle resumes as a disk stream does (transfer_resume.go): the
// target keeps its import running, with the file it was writing still
// open and that file's running checksum, and asks for the rest of the
// bundle from the last byte it took. Positions are bytes of the bundle's
// body (everything after its header line: each file's bytes and trailer
// in turn), so a stream may be reopened anywhere, even inside a trailer.
// The reopened stream (ExportBundleFrom) is the whole bundle's header
// with Offset set, then the body from there; the source hashes the part
// of the file it starts in that the target already has, so that file's
// trailer still covers all of it. ResumingReader checks that the new
// header is the first one's (the same files, sizes, snapshots) and drops
// it.

// BundleResumer is a MemoryMover whose bundle export can start part-way:
// Local, nodeagent.Remote.
type BundleResumer interface {
	// ExportBundleFrom is ExportBundle from byte off of the bundle's body:
	// a stream whose header is the bundle's with Offset off, then the
	// body's bytes from off (see WriteBundleFrom). The instance must be
	// as it was for the first export (suspended or stopped, unchanged).
	ExportBundleFrom(ctx context.Context, id string, off int64, w io.Writer) error
}

// BundleResumingImporter is a MemoryMover whose bundle import reaches its
// host over a connection that may drop (nodeagent.Remote).
type BundleResumingImporter interface {
	// ImportBundleResuming is ImportBundle of the bundle src writes from
	// ResumeAt{} (the whole bundle), asking src again from the target's
	// offset (a byte of the bundle's body) each time the connection
	// drops (bounded; then the import fails and undoes itself as
	// ImportBundle's does).
	ImportBundleResuming(ctx context.Context, spec ImportSpec, src StreamSource, progress Progress) (Instance, error)
}

// NewBundleResumingReader is NewResumingReader of a bundle: reopen is
// asked for the bundle from a byte of its body (ExportBundleFrom).
func NewBundleResumingReader(ctx context.Context, r io.Reader, reopen Reopen, p ResumePolicy) *ResumingReader {
	return newResumingReader(ctx, r, reopen, p, &bundleFormat{})
}

// bundleBody is how many bytes follow a whole bundle's header: each file
// and its trailer of trailer bytes.
func bundleBody(h BundleHeader, trailer int64) int64 {
	var n int64
	for _, f := range h.Files {
		n += f.Size + trailer
	}
	return n
}

// WriteBundleFrom writes the bundle of h from byte off of its body: h with
// Offset off, then the body's bytes from off, each file read from open (a
// path relative to the instance's directory). The part of a file before
// off is read and hashed, not sent, so its trailer is the whole file's.
// An off outside the body is errs.InvalidArgument.
func WriteBundleFrom(w io.Writer, h BundleHeader, off int64, open func(path string) (io.ReadCloser, error)) error {
	h.Version = BundleStreamVersion
	if h.Checksum == "" {
		h.Checksum = StreamChecksum
	}
	sum0, err := newChecksum(h.Checksum)
	if err != nil {
		return err
	}
	trailer := int64(sum0.Size())
	if body := bundleBody(h, trailer); off < 0 || off > body {
		return errs.New(errs.InvalidArgument, "bundle: offset %d outside its body's %d bytes", off, body)
	}
	h.Offset = off
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("bundle header: %w", err)
	}
	var pos int64 // of the current file's first byte in the body
	for _, f := range h.Files {
		end := pos + f.Size + trailer
		if off >= end {
			pos = end
			continue // the target has all of it
		}
		skip := max(0, off-pos) // of this file and its trailer, which the target has
		if err := writeBundleFile(w, f, h.Checksum, skip, open); err != nil {
			return err
		}
		pos = end
	}
	return nil
}

// writeBundleFile writes file f and its trailer less its first skip bytes.
func writeBundleFile(w io.Writer, f BundleFile, checksum string, skip int64, open func(path string) (io.ReadCloser, error)) error {
	r, err := open(f.Path)
	if err != nil {
		return fmt.Errorf("bundle %s: %w", f.Path, err)
	}
	defer r.Close()
	sum, _ := newChecksum(checksum)
	had := min(skip, f.Size)
	if had > 0 {
		if n, err := io.CopyBuffer(sum, io.LimitReader(r, had), make([]byte, DiskStreamBuffer)); err != nil || n != had {
			return fmt.Errorf("bundle %s: hash the first %d bytes: %d, %v", f.Path, had, n, err)
		}
	}
	if skip <= f.Size {
		return writeBody(w, r, f.Size-had, sum, "bundle "+f.Path)
	}
	// Only part of the trailer is missing.
	t := sum.Sum(nil)
	if _, err := w.Write(t[skip-f.Size:]); err != nil {
		return fmt.Errorf("bundle %s trailer: %w", f.Path, err)
	}
	return nil
}

// bundleFormat is a bundle's streamFormat: reopened from a byte of its
// body, the new header the first one's but for Offset.
type bundleFormat struct {
	h     BundleHeader
	whole []byte // h as a whole bundle's header (Offset 0), marshalled
}

func (f *bundleFormat) head(line []byte) (int64, bool) {
	if err := json.Unmarshal(line, &f.h); err != nil {
		return 0, false
	}
	f.whole = wholeBundle(f.h)
	sum, err := newChecksum(f.h.Checksum)
	if err != nil {
		return math.MaxInt64, true // never complete: the importer refuses it
	}
	return bundleBody(f.h, int64(sum.Size())) - f.h.Offset, true
}

func (f *bundleFormat) at(pos int64) (int64, int64) { return f.h.Offset + pos, 0 }

func (f *bundleFormat) check(line []byte, off int64) error {
	var h BundleHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return errs.New(errs.InvalidArgument, "resumed bundle: bad header: %v", err)
	}
	if h.Offset != off || !bytes.Equal(wholeBundle(h), f.whole) {
		return errs.New(errs.InvalidArgument, "resumed bundle: vm %s from byte %d with %d files, want vm %s from %d (the bundle changed)",
			h.ID, h.Offset, len(h.Files), f.h.ID, off)
	}
	return nil
}

// wholeBundle is h with Offset 0, marshalled: what two streams of one
// bundle share.
func wholeBundle(h BundleHeader) []byte {
	h.Offset = 0
	b, _ := json.Marshal(h)
	return b
}

var _ BundleResumer = (*Local)(nil)
