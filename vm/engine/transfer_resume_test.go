package engine

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// cutExporter serves a disk's stream, resumable, and drops the stream
// (returns err after writing) at each of cuts in turn: the stream
// offsets at which its connection "breaks".
type cutExporter struct {
	h     DiskHeader
	disk  []byte
	cuts  []int64 // in the whole stream's bytes
	err   error
	calls []int64 // the offset of each export
}

type cutWriter struct {
	w       io.Writer
	at, pos int64 // the cut, and the whole-stream position of the next byte
	err     error
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if c.at >= 0 && c.pos+int64(len(b)) > c.at {
		k := c.at - c.pos
		n, _ := c.w.Write(b[:k])
		c.pos += int64(n)
		return n, c.err
	}
	n, err := c.w.Write(b)
	c.pos += int64(n)
	return n, err
}

func (e *cutExporter) export(w io.Writer, off int64) error {
	e.calls = append(e.calls, off)
	at := int64(-1)
	if len(e.cuts) > 0 {
		at, e.cuts = e.cuts[0], e.cuts[1:]
	}
	var hdr bytes.Buffer
	h := e.h
	if off > 0 {
		WriteDiskStreamFrom(&hdr, h, bytes.NewReader(e.disk), off)
	} else {
		WriteDiskStream(&hdr, h, bytes.NewReader(e.disk))
	}
	// The cut counts this export's own bytes.
	cw := &cutWriter{w: w, at: at, err: e.err}
	_, err := io.Copy(cw, bytes.NewReader(hdr.Bytes()))
	return err
}

func (e *cutExporter) ExportDisk(ctx context.Context, id string, w io.Writer) error {
	return e.export(w, 0)
}
func (e *cutExporter) ExportDiskFrom(ctx context.Context, id string, off int64, w io.Writer) error {
	return e.export(w, off)
}
func (e *cutExporter) ImportDisk(context.Context, ImportSpec, io.Reader, Progress) (Instance, error) {
	return Instance{}, errors.New("not here")
}

// TestExportResuming: a disk stream dropped mid-header, mid-disk and in
// the trailer, once or several times, reaches the importer as the one
// unbroken stream (the checksum trailer verifies); errors of the instance
// or of the importer's side are not retried, and the retries are
// bounded.
func TestExportResuming(t *testing.T) {
	disk := bytes.Repeat([]byte("resumable disk bytes "), 50000)
	h := DiskHeader{ID: vm.NewID(), Name: "web", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: int64(len(disk))}
	var whole bytes.Buffer
	if err := WriteDiskStream(&whole, h, bytes.NewReader(disk)); err != nil {
		t.Fatal(err)
	}
	n := int64(whole.Len())
	drop := errs.New(errs.Unavailable, "stream dropped")
	fast := ResumePolicy{Backoff: time.Millisecond}
	for _, tc := range []struct {
		name string
		cuts []int64 // each relative to that export's own bytes
	}{
		{"none", nil},
		{"mid-header", []int64{5}},
		{"mid-disk", []int64{n / 2}},
		{"in-trailer", []int64{n - 5}},
		{"three-times", []int64{1000, 200000, 300000}},
		{"at-once", []int64{0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &cutExporter{h: h, disk: disk, cuts: tc.cuts, err: drop}
			var out bytes.Buffer
			var resumed []int64
			p := fast
			p.Resumed = func(_ int, at int64, _ error) { resumed = append(resumed, at) }
			if err := ExportResuming(context.Background(), e, h.ID, &out, p); err != nil {
				t.Fatalf("export: %v (calls from %v)", err, e.calls)
			}
			if !bytes.Equal(out.Bytes(), whole.Bytes()) {
				t.Fatalf("got %d bytes, want the %d of the unbroken stream", out.Len(), n)
			}
			if len(resumed) != len(tc.cuts) {
				t.Errorf("resumed at %v, want %d resumptions", resumed, len(tc.cuts))
			}
			// And it imports: header, disk, trailer check.
			br := bufio.NewReader(bytes.NewReader(out.Bytes()))
			got, err := ReadDiskHeader(br)
			if err != nil {
				t.Fatal(err)
			}
			var d bytes.Buffer
			if err := ReadDiskBody(br, got, &d); err != nil || !bytes.Equal(d.Bytes(), disk) {
				t.Fatalf("import of the resumed stream: %v", err)
			}
			if len(tc.cuts) > 0 && tc.name == "mid-disk" && e.calls[1] == 0 {
				t.Errorf("resumed from the start, not from the offset: %v", e.calls)
			}
		})
	}
	t.Run("not-resumable", func(t *testing.T) {
		e := &cutExporter{h: h, disk: disk, cuts: []int64{100}, err: errs.New(errs.FailedPrecondition, "vm runs")}
		if err := ExportResuming(context.Background(), e, h.ID, io.Discard, fast); errs.ClassOf(err) != errs.FailedPrecondition || len(e.calls) != 1 {
			t.Errorf("export of a running vm: %v after %d calls, want FailedPrecondition at once", err, len(e.calls))
		}
	})
	t.Run("importer-gone", func(t *testing.T) {
		e := &cutExporter{h: h, disk: disk}
		pr, pw := io.Pipe()
		pr.CloseWithError(errors.New("import ended"))
		if err := ExportResuming(context.Background(), e, h.ID, pw, fast); err == nil || len(e.calls) != 1 {
			t.Errorf("export into a closed import: %v after %d calls, want the error at once", err, len(e.calls))
		}
	})
	t.Run("gives-up", func(t *testing.T) {
		e := &cutExporter{h: h, disk: disk, cuts: []int64{10, 10, 10, 10, 10, 10, 10}, err: drop}
		err := ExportResuming(context.Background(), e, h.ID, io.Discard, ResumePolicy{Tries: 3, Backoff: time.Millisecond})
		if errs.ClassOf(err) != errs.Unavailable || len(e.calls) != 4 {
			t.Errorf("export dropped every time: %v after %d calls, want Unavailable after 4", err, len(e.calls))
		}
	})
	t.Run("offset-stream-not-importable", func(t *testing.T) {
		var s bytes.Buffer
		WriteDiskStreamFrom(&s, h, bytes.NewReader(disk), 100)
		br := bufio.NewReader(&s)
		got, err := ReadDiskHeader(br)
		if err != nil {
			t.Fatal(err)
		}
		if err := ReadDiskBody(br, got, io.Discard); errs.ClassOf(err) != errs.InvalidArgument {
			t.Errorf("import of a resumed stream alone: %v", err)
		}
	})
}
