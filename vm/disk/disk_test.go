package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/testenv"
)

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s not installed", name)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// makeBase writes a sparse raw file of size bytes with a known pattern at
// two offsets and returns its path.
func makeBase(t *testing.T, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "base.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x11}, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x22}, 1<<20), size/2); err != nil {
		t.Fatal(err)
	}
	return p
}

func fileHash(t *testing.T, p string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func qemuIO(t *testing.T, format, path, cmd string) string {
	t.Helper()
	out, err := exec.Command("qemu-io", "-f", format, "-c", cmd, path).CombinedOutput()
	if err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("qemu-io %q: %v\n%s", cmd, err, out)
	}
	return string(out)
}

func TestOverlayLeavesBaseUnchanged(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "qemu-io")
	ctx := testCtx(t)
	dir := t.TempDir()
	base := makeBase(t, dir, 64<<20)
	before := fileHash(t, base)
	baseStat, _ := os.Stat(base)

	ov := filepath.Join(dir, "vm.qcow2")
	start := time.Now()
	if err := CreateOverlay(ctx, base, FormatRaw, ov, 0); err != nil {
		t.Fatal(err)
	}
	t.Logf("overlay created in %v", time.Since(start))

	in, err := Info(ctx, ov)
	if err != nil {
		t.Fatal(err)
	}
	if in.Format != FormatQcow2 || in.VirtualSize != 64<<20 || in.Backing != base || in.BackingFmt != FormatRaw {
		t.Fatalf("info = %+v", in)
	}
	// The overlay reads the base's data, takes writes, and the base stays
	// byte for byte the same.
	qemuIO(t, FormatQcow2, ov, "read -P 0x11 0 1M")
	qemuIO(t, FormatQcow2, ov, "read -P 0x22 32M 1M")
	qemuIO(t, FormatQcow2, ov, "write -P 0xab 0 2M")
	qemuIO(t, FormatQcow2, ov, "read -P 0xab 0 2M")
	if after := fileHash(t, base); after != before {
		t.Fatal("base changed after writes to the overlay")
	}
	st, _ := os.Stat(base)
	if !st.ModTime().Equal(baseStat.ModTime()) {
		t.Fatal("base mtime changed")
	}

	// A second overlay of the same base is independent of the first.
	ov2 := filepath.Join(dir, "vm2.qcow2")
	if err := CreateOverlay(ctx, base, FormatRaw, ov2, 128<<20); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, FormatQcow2, ov2, "read -P 0x11 0 1M")
	if in, _ := Info(ctx, ov2); in.VirtualSize != 128<<20 {
		t.Fatalf("second overlay size %d", in.VirtualSize)
	}
}

func TestCreateOverlayErrors(t *testing.T) {
	needTool(t, "qemu-img")
	ctx := testCtx(t)
	dir := t.TempDir()
	base := makeBase(t, dir, 16<<20)
	existing := filepath.Join(dir, "exists.qcow2")
	if err := os.WriteFile(existing, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		base   string
		format string
		path   string
		size   int64
		class  *errs.Class
	}{
		{"smaller than base", base, FormatRaw, filepath.Join(dir, "a.qcow2"), 8 << 20, errs.InvalidArgument},
		{"negative size", base, FormatRaw, filepath.Join(dir, "b.qcow2"), -1, errs.InvalidArgument},
		{"bad format", base, "vmdk", filepath.Join(dir, "c.qcow2"), 0, errs.InvalidArgument},
		{"format mismatch", base, FormatQcow2, filepath.Join(dir, "d.qcow2"), 0, errs.InvalidArgument},
		{"missing base", filepath.Join(dir, "nope.raw"), FormatRaw, filepath.Join(dir, "e.qcow2"), 0, errs.NotFound},
		{"destination exists", base, FormatRaw, existing, 0, errs.AlreadyExists},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CreateOverlay(ctx, tt.base, tt.format, tt.path, tt.size)
			if !errors.Is(err, tt.class) {
				t.Fatalf("err = %v, want class %v", err, tt.class)
			}
			if tt.path != existing {
				if _, err := os.Stat(tt.path); err == nil {
					t.Fatal("a failed create left a file behind")
				}
			}
		})
	}
	if b, _ := os.ReadFile(existing); string(b) != "x" {
		t.Fatal("existing destination was overwritten")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temp file left behind: %s", e.Name())
		}
	}
}

func TestGrow(t *testing.T) {
	needTool(t, "qemu-img")
	ctx := testCtx(t)
	dir := t.TempDir()
	base := makeBase(t, dir, 16<<20)
	ov := filepath.Join(dir, "vm.qcow2")
	if err := CreateOverlay(ctx, base, FormatRaw, ov, 0); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		path    string
		size    int64
		class   *errs.Class
		want    int64
		wantErr bool
	}{
		{"grow overlay", ov, 48 << 20, nil, 48 << 20, false},
		{"same size is a no-op", ov, 48 << 20, nil, 48 << 20, false},
		{"refuse shrink", ov, 32 << 20, errs.InvalidArgument, 48 << 20, true},
		{"grow raw", base, 32 << 20, nil, 32 << 20, false},
		{"missing", filepath.Join(dir, "nope"), 1 << 30, errs.NotFound, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Grow(ctx, tt.path, tt.size)
			if tt.wantErr {
				if !errors.Is(err, tt.class) {
					t.Fatalf("err = %v, want %v", err, tt.class)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if tt.want == 0 {
				return
			}
			in, err := Info(ctx, tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if in.VirtualSize != tt.want {
				t.Fatalf("size = %d, want %d", in.VirtualSize, tt.want)
			}
		})
	}
}

func TestGrowDiskInUse(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "qemu-io")
	ctx := testCtx(t)
	dir := t.TempDir()
	base := makeBase(t, dir, 16<<20)
	ov := filepath.Join(dir, "vm.qcow2")
	if err := CreateOverlay(ctx, base, FormatRaw, ov, 0); err != nil {
		t.Fatal(err)
	}
	// qemu-io holds the image's write lock like a running VM does.
	holder := exec.Command("qemu-io", "-f", "qcow2", "-c", "sleep 5000", ov)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	var err error
	// qemu-io may take seconds to start on a loaded machine: retry until
	// its lock is seen (a grow before that is harmless here).
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		if err = Grow(ctx, ov, 64<<20); errors.Is(err, errs.FailedPrecondition) {
			break
		}
	}
	if !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("grow of a disk in use: err = %v, want FailedPrecondition", err)
	}
	// Info still works on a locked disk.
	if _, err := Info(ctx, ov); err != nil {
		t.Fatalf("info on a locked disk: %v", err)
	}
}

func TestCloneSparseIndependent(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	src := makeBase(t, dir, 64<<20)
	want := fileHash(t, src)
	dst := filepath.Join(dir, "clone.raw")
	start := time.Now()
	method, err := Clone(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("clone (%s) in %v", method, time.Since(start))
	if got := fileHash(t, dst); got != want {
		t.Fatal("clone differs from source")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 64<<20 {
		t.Fatalf("clone size %d", st.Size)
	}
	if alloc := st.Blocks * 512; method == CloneSparse && alloc > 8<<20 {
		t.Fatalf("sparse clone allocates %d bytes, want about 2 MiB", alloc)
	}
	// Writes to the clone do not reach the source.
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := fileHash(t, src); got != want {
		t.Fatal("writing the clone changed the source")
	}
	// The destination is never replaced.
	if _, err := Clone(ctx, src, dst); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("clone onto existing: %v", err)
	}
	if _, err := Clone(ctx, filepath.Join(dir, "nope"), filepath.Join(dir, "x")); !errors.Is(err, errs.NotFound) {
		t.Fatalf("clone of missing: %v", err)
	}
}

// TestCloneReflinkXFS proves the FICLONE path on a loop-mounted XFS
// filesystem (needs root, mkfs.xfs and a loop device).
func TestCloneReflinkXFS(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.SkipUnlessCI(t, "needs root to mount a loop device")
	}
	needTool(t, "mkfs.xfs")
	ctx := testCtx(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "xfs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 512<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.xfs", "-q", "-m", "reflink=1", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.xfs: %v\n%s", err, out)
	}
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount xfs here: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })

	src := makeBase(t, mnt, 128<<20)
	want := fileHash(t, src)
	dst := filepath.Join(mnt, "clone.raw")
	start := time.Now()
	method, err := Clone(ctx, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reflink clone in %v", time.Since(start))
	if method != CloneReflink {
		t.Fatalf("method = %s, want reflink", method)
	}
	if fileHash(t, dst) != want {
		t.Fatal("clone differs")
	}
	if err := os.WriteFile(dst, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fileHash(t, src) != want {
		t.Fatal("writing the reflink clone changed the source")
	}
}

func TestFreeBytes(t *testing.T) {
	n, err := FreeBytes(t.TempDir())
	if err != nil || n <= 0 {
		t.Fatalf("FreeBytes = %d, %v", n, err)
	}
	if _, err := FreeBytes("/nonexistent/dir"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("missing dir: %v", err)
	}
}

func TestParseInfo(t *testing.T) {
	in, err := parseInfo([]byte(`{"virtual-size": 1073741824, "filename": "vm.qcow2", "format": "qcow2",
		"actual-size": 200704, "backing-filename": "base.raw", "full-backing-filename": "/img/base.raw",
		"backing-filename-format": "raw"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := ImageInfo{Format: "qcow2", VirtualSize: 1 << 30, ActualSize: 200704, Backing: "/img/base.raw", BackingFmt: "raw"}
	if in != want {
		t.Fatalf("got %+v, want %+v", in, want)
	}
	if _, err := parseInfo([]byte("not json")); err == nil {
		t.Fatal("want error for bad json")
	}
}

// TestCloneUnsynced: the unflushed copy is the same copy (content, size,
// holes, no replacing), and SyncFile flushes it.
func TestCloneUnsynced(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	src := makeBase(t, dir, 64<<20)
	dst := filepath.Join(dir, "clone.raw")
	if _, err := CloneUnsynced(ctx, src, dst); err != nil {
		t.Fatal(err)
	}
	if fileHash(t, dst) != fileHash(t, src) {
		t.Fatal("unsynced clone differs from source")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil || st.Size != 64<<20 || st.Blocks*512 > 8<<20 {
		t.Fatalf("unsynced clone: size %d, allocated %d, %v", st.Size, st.Blocks*512, err)
	}
	if _, err := CloneUnsynced(ctx, src, dst); !errors.Is(err, errs.AlreadyExists) {
		t.Fatalf("clone over an existing file: %v, want AlreadyExists", err)
	}
	if err := SyncFile(dst); err != nil {
		t.Fatal(err)
	}
	if err := SyncFile(filepath.Join(dir, "none")); err == nil {
		t.Fatal("SyncFile of a missing file succeeded")
	}
}

// TestCloneOverUnsynced: the copy lands in dst's own inode (a descriptor
// opened before reads it), longer or shorter than what dst held, holes
// kept; a missing dst is an error, not a new file.
func TestCloneOverUnsynced(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	src := makeBase(t, dir, 64<<20)
	dst := filepath.Join(dir, "over.raw")
	if err := os.WriteFile(dst, bytes.Repeat([]byte("old!"), 32<<20), 0o600); err != nil { // 128 MiB
		t.Fatal(err)
	}
	// A reader never finds dst empty meanwhile (a QEMU opening its image).
	stop := make(chan struct{})
	shrunk := make(chan int64, 1)
	go func() {
		var min int64 = 1 << 62
		for {
			select {
			case <-stop:
				shrunk <- min
				return
			default:
			}
			if st, err := os.Stat(dst); err == nil && st.Size() < min {
				min = st.Size()
			}
		}
	}()
	held, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	var before, after syscall.Stat_t
	syscall.Stat(dst, &before)
	if _, err := CloneOverUnsynced(ctx, src, dst); err != nil {
		t.Fatal(err)
	}
	close(stop)
	if m := <-shrunk; m < 64<<20 {
		t.Errorf("dst was %d bytes at some point during the copy", m)
	}
	syscall.Stat(dst, &after)
	if before.Ino != after.Ino {
		t.Fatal("dst got a new inode")
	}
	if fileHash(t, dst) != fileHash(t, src) || after.Size != 64<<20 || after.Blocks*512 > 8<<20 {
		t.Fatalf("copy over: size %d, allocated %d, or content differs", after.Size, after.Blocks*512)
	}
	b := make([]byte, 4)
	if _, err := held.ReadAt(b, 32<<20); err != nil || string(b) == "old!" {
		t.Fatalf("the descriptor opened before reads %q, %v", b, err)
	}
	if _, err := CloneOverUnsynced(ctx, src, filepath.Join(dir, "none")); err == nil {
		t.Fatal("clone over a missing file succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "none")); err == nil {
		t.Fatal("clone over a missing file made it")
	}
}
