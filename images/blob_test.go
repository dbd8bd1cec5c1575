package images

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

// sparseFile writes a 64 MiB file with two data extents and returns its
// path and SHA-256.
func sparseFile(t *testing.T, dir string) (string, string) {
	t.Helper()
	p := filepath.Join(dir, "sparse.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(64 << 20)
	for _, off := range []int64{4096, 40 << 20} {
		b := make([]byte, 256<<10)
		rand.Read(b)
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(p)
	s := sha256.Sum256(b)
	return p, hex.EncodeToString(s[:])
}

func allocated(t *testing.T, p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestFileSHA256Cache: the sum is right, cached beside a large file, and
// recomputed when the file changes.
func TestFileSHA256Cache(t *testing.T) {
	dir := t.TempDir()
	p, want := sparseFile(t, dir)
	got, size, err := FileSHA256(p)
	if err != nil || got != want || size != 64<<20 {
		t.Fatalf("sum %s %d %v, want %s", got, size, err, want)
	}
	side := filepath.Join(dir, ".sparse.raw.sha256")
	if b, err := os.ReadFile(side); err != nil || !strings.HasPrefix(string(b), want+" ") {
		t.Fatalf("cache %q %v", b, err)
	}
	f, _ := os.OpenFile(p, os.O_WRONLY, 0)
	f.WriteAt([]byte("changed"), 8<<20)
	f.Close()
	if got, _, _ := FileSHA256(p); got == want {
		t.Fatal("a stale cached sum was returned for a changed file")
	}
	if _, _, err := FileSHA256(filepath.Join(dir, "nope")); !errors.Is(err, errs.NotFound) {
		t.Fatalf("missing file: %v", err)
	}
}

// TestSparseRoundTrip: the sparse encoding carries the data extents only,
// and the received file keeps the holes.
func TestSparseRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p, want := sparseFile(t, dir)
	var buf bytes.Buffer
	sent, err := WriteSparse(&buf, p)
	if err != nil {
		t.Fatal(err)
	}
	if sent > 4<<20 || buf.Len() > 4<<20 {
		t.Fatalf("sent %d data bytes, %d on the wire, for 512 KiB of data", sent, buf.Len())
	}
	out, _ := os.Create(filepath.Join(dir, "out"))
	defer out.Close()
	h := sha256.New()
	if err := readSparse(bytes.NewReader(buf.Bytes()), out, 64<<20, h); err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(h.Sum(nil)) != want {
		t.Fatal("hash of the received stream differs")
	}
	if got, _, _ := FileSHA256(out.Name()); got != want {
		t.Fatal("received file differs")
	}
	if a := allocated(t, out.Name()); a > 8<<20 {
		t.Fatalf("received file allocates %d bytes: holes were filled", a)
	}
}

// TestReadSparseRejects: malformed streams are errors.
func TestReadSparseRejects(t *testing.T) {
	frame := func(off, n int64) []byte {
		b := make([]byte, 16)
		be64(b, off)
		be64(b[8:], n)
		return b
	}
	hdr := append([]byte(SparseMagic), make([]byte, 8)...)
	be64(hdr[8:], 100)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for name, s := range map[string][]byte{
		"bad magic":      cat([]byte("NOTSPARS"), hdr[8:], frame(100, 0)),
		"wrong size":     cat(hdr[:8], frame(0, 99)[8:], frame(99, 0)),
		"beyond the end": cat(hdr, frame(90, 20), make([]byte, 20), frame(100, 0)),
		"out of order":   cat(hdr, frame(50, 10), make([]byte, 10), frame(10, 10), make([]byte, 10), frame(100, 0)),
		"short data":     cat(hdr, frame(0, 10), make([]byte, 5)),
		"no end":         cat(hdr, frame(0, 10), make([]byte, 10)),
		"early end":      cat(hdr, frame(50, 0)),
	} {
		f, _ := os.Create(filepath.Join(t.TempDir(), "f"))
		if err := readSparse(bytes.NewReader(s), f, 100, io.Discard); err == nil {
			t.Errorf("%s: accepted", name)
		}
		f.Close()
	}
}

func TestManifestValidate(t *testing.T) {
	sum := strings.Repeat("a", 64)
	img := func(files ...BlobFile) Manifest {
		return Manifest{Kind: KindImage, Name: "minimal@20261205-120000-abcd", Files: append([]BlobFile{
			{Path: "image.json", SHA256: sum, Mode: 0o444}, {Path: "rootfs.ext4", SHA256: sum, Mode: 0o444}}, files...)}
	}
	if err := img().Validate(); err != nil {
		t.Fatal(err)
	}
	bad := map[string]Manifest{
		"bare os":       {Kind: KindImage, Name: "minimal", Files: img().Files},
		"unknown kind":  {Kind: "blob", Name: "x", Files: img().Files},
		"kernel name":   {Kind: KindKernel, Name: "../6.1", Files: img().Files},
		"missing file":  {Kind: KindImage, Name: img().Name, Files: img().Files[:1]},
		"dotdot":        img(BlobFile{Path: "../x", SHA256: sum}),
		"inner dotdot":  img(BlobFile{Path: "a/../../x", SHA256: sum}),
		"absolute":      img(BlobFile{Path: "/etc/passwd", SHA256: sum}),
		"twice":         img(BlobFile{Path: "image.json", SHA256: sum}),
		"bad checksum":  img(BlobFile{Path: "x", SHA256: "AB"}),
		"setuid":        img(BlobFile{Path: "x", SHA256: sum, Mode: 0o4755}),
		"negative size": img(BlobFile{Path: "x", SHA256: sum, Size: -1}),
	}
	for name, m := range bad {
		if err := m.Validate(); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestReceiveRefusesAndCleansUp: a file with the wrong checksum, or a
// failing opener, installs nothing and leaves nothing in tmp; a good one
// installs the image, and a second Receive finds it there.
func TestReceiveRefusesAndCleansUp(t *testing.T) {
	dir := t.TempDir()
	p, sum := sparseFile(t, dir)
	meta := []byte(`{"os":"minimal","version":"20261205-120000-abcd","size_bytes":67108864}`)
	ms := sha256.Sum256(meta)
	m := Manifest{Kind: KindImage, Name: "minimal@20261205-120000-abcd", Files: []BlobFile{
		{Path: "image.json", SHA256: hex.EncodeToString(ms[:]), Size: int64(len(meta)), Mode: 0o444},
		{Path: "rootfs.ext4", SHA256: sum, Size: 64 << 20, Mode: 0o444}}}
	cat := &Catalog{Dir: filepath.Join(dir, "cat")}
	calls := 0
	open := func(corrupt bool) BlobOpener {
		return func(_ context.Context, f BlobFile) (io.ReadCloser, bool, error) {
			calls++
			if f.Path == "image.json" {
				return io.NopCloser(bytes.NewReader(meta)), false, nil
			}
			var buf bytes.Buffer
			if _, err := WriteSparse(&buf, p); err != nil {
				return nil, false, err
			}
			b := buf.Bytes()
			if corrupt {
				b[40] ^= 1
			}
			return io.NopCloser(bytes.NewReader(b)), true, nil
		}
	}
	empty := func() {
		t.Helper()
		ents, _ := os.ReadDir(filepath.Join(cat.Dir, "tmp"))
		if len(ents) != 0 {
			t.Fatalf("tmp holds %d entries", len(ents))
		}
		if _, err := cat.Resolve(m.Name); !errors.Is(err, errs.NotFound) {
			t.Fatalf("after a failed receive: %v", err)
		}
	}
	if _, err := cat.Receive(context.Background(), m, open(true)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt: %v", err)
	}
	empty()
	failing := func(context.Context, BlobFile) (io.ReadCloser, bool, error) {
		return nil, false, errs.New(errs.Unavailable, "control plane away")
	}
	if _, err := cat.Receive(context.Background(), m, failing); !errors.Is(err, errs.Unavailable) {
		t.Fatalf("failing opener: %v", err)
	}
	empty()
	n, err := cat.Receive(context.Background(), m, open(false))
	if err != nil {
		t.Fatal(err)
	}
	im, err := cat.Resolve(m.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got, _, _ := FileSHA256(im.Path); got != sum || n > 4<<20 {
		t.Fatalf("installed %s (%d bytes received)", got, n)
	}
	calls = 0
	if _, err := cat.Receive(context.Background(), m, open(false)); err != nil || calls != 0 {
		t.Fatalf("second receive: %v, %d files opened", err, calls)
	}
}
