package engine

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// cutReader gives r's bytes until at, then fails with err.
type cutReader struct {
	r   io.Reader
	at  int64 // < 0: never
	err error
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.at == 0 {
		return 0, c.err
	}
	if c.at > 0 && int64(len(p)) > c.at {
		p = p[:c.at]
	}
	n, err := c.r.Read(p)
	if c.at > 0 {
		c.at -= int64(n)
	}
	return n, err
}

// TestResumingReader: an import whose connection drops mid-header,
// mid-disk, in the trailer or several times reads on from the byte it had
// (each reopened stream is ExportDiskFrom's from that byte, itself
// dropped again where the case says) and its trailer check passes over
// the whole disk; a source that resumes from a changed disk is refused;
// the retries are bounded; a cancelled import is not resumed.
func TestResumingReader(t *testing.T) {
	disk := bytes.Repeat([]byte("importer keeps its partial file "), 40000)
	h := DiskHeader{ID: vm.NewID(), Name: "web", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: int64(len(disk))}
	var whole bytes.Buffer
	if err := WriteDiskStream(&whole, h, bytes.NewReader(disk)); err != nil {
		t.Fatal(err)
	}
	n := int64(whole.Len())
	drop := io.ErrUnexpectedEOF
	fast := ResumePolicy{Backoff: time.Millisecond}
	// open is the source: the stream from off, cut after the next of cuts.
	type source struct {
		disk []byte
		cuts []int64
		ats  []ResumeAt
	}
	open := func(s *source, off int64) io.Reader {
		var b bytes.Buffer
		hh := h
		hh.Size = int64(len(s.disk))
		if off == 0 {
			WriteDiskStream(&b, hh, bytes.NewReader(s.disk))
		} else {
			WriteDiskStreamFrom(&b, hh, bytes.NewReader(s.disk), off)
		}
		at := int64(-1)
		if len(s.cuts) > 0 {
			at, s.cuts = s.cuts[0], s.cuts[1:]
		}
		return &cutReader{r: &b, at: at, err: drop}
	}
	imp := func(r io.Reader) ([]byte, error) {
		br := bufio.NewReader(r)
		got, err := ReadDiskHeader(br)
		if err != nil {
			return nil, err
		}
		var d bytes.Buffer
		err = ReadDiskBody(br, got, &d)
		return d.Bytes(), err
	}
	for _, tc := range []struct {
		name string
		cuts []int64 // the first stream's cut, then each reopened one's (its own bytes)
	}{
		{"none", nil},
		{"mid-header", []int64{7}},
		{"after-header", []int64{int64(bytes.IndexByte(whole.Bytes(), '\n') + 1)}},
		{"mid-disk", []int64{n / 2}},
		{"in-trailer", []int64{n - 5}},
		{"three-times", []int64{1000, 200000, 300000}},
		{"new-stream-drops-in-header", []int64{5000, 10, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &source{disk: disk, cuts: tc.cuts}
			p := fast
			var resumed []int64
			p.Resumed = func(_ int, at int64, _ error) { resumed = append(resumed, at) }
			rr := NewResumingReader(context.Background(), open(s, 0), func(_ context.Context, _ int, at ResumeAt) (io.Reader, error) {
				s.ats = append(s.ats, at)
				return open(s, at.Offset), nil
			}, p)
			got, err := imp(rr)
			if err != nil {
				t.Fatalf("import: %v (resumed at %+v)", err, s.ats)
			}
			if !bytes.Equal(got, disk) {
				t.Fatal("imported disk differs")
			}
			if want := len(tc.cuts); rr.Resumes() != want || len(resumed) != want {
				t.Errorf("resumed %d times (%v), want %d", rr.Resumes(), resumed, want)
			}
			if rr.Taken() != n {
				t.Errorf("taken %d bytes, want the stream's %d (nothing counted twice)", rr.Taken(), n)
			}
			if tc.name == "mid-disk" && (s.ats[0].Offset == 0 || !s.ats[0].Headed || s.ats[0].Taken != n/2) {
				t.Errorf("resumed from %+v, want from the disk's byte after the %d taken", s.ats[0], n/2)
			}
		})
	}
	t.Run("changed-disk", func(t *testing.T) {
		s := &source{disk: disk, cuts: []int64{n / 2}}
		rr := NewResumingReader(context.Background(), open(s, 0), func(_ context.Context, _ int, at ResumeAt) (io.Reader, error) {
			s.disk = append(bytes.Clone(disk), 'x')
			return open(s, at.Offset), nil
		}, fast)
		if _, err := imp(rr); errs.ClassOf(err) != errs.InvalidArgument {
			t.Errorf("resumed from a changed disk: %v, want InvalidArgument", err)
		}
	})
	t.Run("gives-up", func(t *testing.T) {
		s := &source{disk: disk, cuts: []int64{n / 2, 0, 0, 0, 0, 0, 0}}
		calls := 0
		rr := NewResumingReader(context.Background(), open(s, 0), func(_ context.Context, _ int, at ResumeAt) (io.Reader, error) {
			calls++
			return open(s, at.Offset), nil
		}, ResumePolicy{Tries: 3, Backoff: time.Millisecond})
		if _, err := imp(rr); err == nil || calls != 3 {
			t.Errorf("dropped every time: %v after %d reopens, want an error after 3", err, calls)
		}
	})
	t.Run("reopen-fails", func(t *testing.T) {
		s := &source{disk: disk, cuts: []int64{n / 2}}
		calls := 0
		rr := NewResumingReader(context.Background(), open(s, 0), func(context.Context, int, ResumeAt) (io.Reader, error) {
			calls++
			return nil, errs.New(errs.Unavailable, "no route")
		}, ResumePolicy{Tries: 2, Backoff: time.Millisecond})
		if _, err := imp(rr); err == nil || calls != 2 {
			t.Errorf("no source to resume from: %v after %d reopens, want an error after 2", err, calls)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		s := &source{disk: disk, cuts: []int64{n / 2}}
		rr := NewResumingReader(ctx, open(s, 0), func(context.Context, int, ResumeAt) (io.Reader, error) {
			t.Error("reopened a cancelled import")
			return nil, nil
		}, fast)
		if _, err := imp(rr); err == nil {
			t.Error("a cancelled import succeeded")
		}
	})
	// Both ends drop: the target's reopen is the source's resuming
	// export from the offset the target asked for.
	t.Run("both-ends", func(t *testing.T) {
		e := &cutExporter{h: h, disk: disk, cuts: []int64{100000, -1, 3000, -1}, err: errs.New(errs.Unavailable, "source dropped")}
		s := &source{disk: disk, cuts: []int64{n / 3}}
		rr := NewResumingReader(context.Background(), open(s, 0), func(ctx context.Context, _ int, at ResumeAt) (io.Reader, error) {
			pr, pw := io.Pipe()
			go func() { pw.CloseWithError(ExportResumingFrom(ctx, e, h.ID, at.Offset, pw, fast)) }()
			return pr, nil
		}, fast)
		got, err := imp(rr)
		if err != nil || !bytes.Equal(got, disk) {
			t.Fatalf("import over two dropping ends: %v", err)
		}
		if len(e.calls) != 2 || e.calls[0] == 0 || e.calls[1] <= e.calls[0] {
			t.Errorf("source exports from %v, want the target's offset then on from it", e.calls)
		}
	})
}
