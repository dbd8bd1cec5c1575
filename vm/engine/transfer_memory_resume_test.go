package engine

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// testBundle is a bundle's header and files: a disk, saved state (one
// empty file) and a snapshot's disk.
func testBundle(t *testing.T) (BundleHeader, map[string][]byte) {
	t.Helper()
	snap := vm.NewID()
	files := map[string][]byte{
		"disk.qcow2":                        bytes.Repeat([]byte("bundle disk "), 90000),
		moveStateDir + "/ram":               bytes.Repeat([]byte{0x5a, 1, 2}, 70000),
		moveStateDir + "/empty":             nil,
		"snapshots/" + snap + "/disk.qcow2": bytes.Repeat([]byte("snap "), 3000),
	}
	h := BundleHeader{ID: vm.NewID(), Name: "web", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Memory: true, AgentKey: "k",
		Snapshots: []BundleSnapshot{{ID: snap, Name: "s1", CreatedAt: time.Unix(1700000000, 0).UTC()}},
		Files: []BundleFile{{Path: "disk.qcow2"}, {Path: moveStateDir + "/ram"}, {Path: moveStateDir + "/empty"},
			{Path: "snapshots/" + snap + "/disk.qcow2"}}}
	for i := range h.Files {
		h.Files[i].Size = int64(len(files[h.Files[i].Path]))
	}
	return h, files
}

func bundleOpener(files map[string][]byte) func(string) (io.ReadCloser, error) {
	return func(p string) (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(files[p])), nil }
}

// TestWriteBundleFrom: a bundle written from any byte of its body is the
// whole bundle's bytes from there, after a header that is the whole
// one's with Offset set; an offset outside the body is refused.
func TestWriteBundleFrom(t *testing.T) {
	h, files := testBundle(t)
	var whole bytes.Buffer
	if err := WriteBundle(&whole, h, bundleOpener(files)); err != nil {
		t.Fatal(err)
	}
	start := bytes.IndexByte(whole.Bytes(), '\n') + 1
	body := whole.Bytes()[start:]
	var pos []int64
	for off := int64(0); off <= int64(len(body)); off += 9973 {
		pos = append(pos, off)
	}
	// Each file's edges and its trailer's.
	var at int64
	for _, f := range h.Files {
		pos = append(pos, at, at+1, at+f.Size-1, at+f.Size, at+f.Size+1, at+f.Size+3)
		at += f.Size + 4
	}
	pos = append(pos, int64(len(body))-1, int64(len(body)))
	for _, off := range pos {
		if off < 0 || off > int64(len(body)) {
			continue
		}
		var b bytes.Buffer
		if err := WriteBundleFrom(&b, h, off, bundleOpener(files)); err != nil {
			t.Fatalf("from %d: %v", off, err)
		}
		br := bufio.NewReader(&b)
		line, _ := br.ReadSlice('\n')
		var f bundleFormat
		if _, ok := f.head(line[:len(line)-1]); !ok || f.h.Offset != off {
			t.Fatalf("from %d: header %q", off, line)
		}
		rest, _ := io.ReadAll(br)
		if !bytes.Equal(rest, body[off:]) {
			t.Fatalf("from %d: %d bytes differ from the whole bundle's %d from there", off, len(rest), len(body[off:]))
		}
	}
	for _, off := range []int64{-1, int64(len(body)) + 1} {
		if err := WriteBundleFrom(io.Discard, h, off, bundleOpener(files)); errs.ClassOf(err) != errs.InvalidArgument {
			t.Errorf("from %d: %v, want InvalidArgument", off, err)
		}
	}
	// A part is not a whole bundle to an importer.
	var part bytes.Buffer
	WriteBundleFrom(&part, h, 100, bundleOpener(files))
	if _, err := ReadBundleHeader(bufio.NewReader(&part)); errs.ClassOf(err) != errs.InvalidArgument {
		t.Errorf("a bundle's part read as a bundle: %v", err)
	}
}

// TestBundleResumingReader: a bundle import whose stream drops mid-header,
// mid-file, in a trailer, at a file's edge or several times reads on from
// the byte it had (each reopened stream WriteBundleFrom's from that byte
// of the body, itself cut where the case says); every file arrives whole,
// its trailer checked; a changed bundle is refused; the tries are bounded.
func TestBundleResumingReader(t *testing.T) {
	h, files := testBundle(t)
	var whole bytes.Buffer
	if err := WriteBundle(&whole, h, bundleOpener(files)); err != nil {
		t.Fatal(err)
	}
	n := int64(whole.Len())
	hl := int64(bytes.IndexByte(whole.Bytes(), '\n') + 1)
	diskEnd := hl + h.Files[0].Size
	fast := ResumePolicy{Backoff: time.Millisecond}
	type source struct {
		h    BundleHeader
		cuts []int64
		ats  []ResumeAt
	}
	open := func(s *source, off int64) io.Reader {
		var b bytes.Buffer
		if err := WriteBundleFrom(&b, s.h, off, bundleOpener(files)); err != nil {
			t.Errorf("export from %d: %v", off, err)
		}
		at := int64(-1)
		if len(s.cuts) > 0 {
			at, s.cuts = s.cuts[0], s.cuts[1:]
		}
		return &cutReader{r: &b, at: at, err: io.ErrUnexpectedEOF}
	}
	imp := func(r io.Reader) (string, error) {
		dir := t.TempDir()
		br := bufio.NewReaderSize(r, maxDiskHeader)
		got, err := ReadBundleHeader(br)
		if err != nil {
			return dir, err
		}
		return dir, ReadBundleFiles(br, got, dir)
	}
	for _, tc := range []struct {
		name string
		cuts []int64
	}{
		{"none", nil},
		{"mid-header", []int64{9}},
		{"after-header", []int64{hl}},
		{"mid-disk", []int64{hl + 50000}},
		{"disk-trailer", []int64{diskEnd + 2}},
		{"file-edge", []int64{diskEnd + 4}},
		{"last-byte", []int64{n - 1}},
		{"four-times", []int64{hl + 1000, 30000, 200000, 5}},
		{"new-stream-drops-in-header", []int64{hl + 7000, 10, 3}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &source{h: h, cuts: tc.cuts}
			rr := NewBundleResumingReader(context.Background(), open(s, 0), func(_ context.Context, _ int, at ResumeAt) (io.Reader, error) {
				s.ats = append(s.ats, at)
				return open(s, at.Offset), nil
			}, fast)
			dir, err := imp(rr)
			if err != nil {
				t.Fatalf("import: %v (resumed at %+v)", err, s.ats)
			}
			for p, want := range files {
				if b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(p))); err != nil || !bytes.Equal(b, want) {
					t.Errorf("%s: %d bytes, %v", p, len(b), err)
				}
			}
			if rr.Resumes() != len(tc.cuts) || rr.Taken() != n {
				t.Errorf("resumed %d times, took %d bytes; want %d, %d", rr.Resumes(), rr.Taken(), len(tc.cuts), n)
			}
			if tc.name == "mid-disk" && (!s.ats[0].Headed || s.ats[0].Offset != 50000 || s.ats[0].Taken != hl+50000) {
				t.Errorf("resumed at %+v, want from byte 50000 of the body", s.ats[0])
			}
		})
	}
	t.Run("changed-bundle", func(t *testing.T) {
		s := &source{h: h, cuts: []int64{hl + 50000}}
		rr := NewBundleResumingReader(context.Background(), open(s, 0), func(_ context.Context, _ int, at ResumeAt) (io.Reader, error) {
			s.h.Snapshots = nil
			s.h.Files = s.h.Files[:3]
			return open(s, at.Offset), nil
		}, fast)
		if _, err := imp(rr); errs.ClassOf(err) != errs.InvalidArgument {
			t.Errorf("resumed from a changed bundle: %v, want InvalidArgument", err)
		}
	})
	t.Run("gives-up", func(t *testing.T) {
		s := &source{h: h, cuts: []int64{hl + 50000, 0, 0, 0, 0, 0}}
		calls := 0
		rr := NewBundleResumingReader(context.Background(), open(s, 0), func(_ context.Context, _ int, at ResumeAt) (io.Reader, error) {
			calls++
			return open(s, at.Offset), nil
		}, ResumePolicy{Tries: 4, Backoff: time.Millisecond})
		if _, err := imp(rr); err == nil || calls != 4 {
			t.Errorf("dropped every time: %v after %d reopens, want an error after 4", err, calls)
		}
	})
}
