package engine

import (
	"bufio"
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
)

// ramFixture is a RAM file of a "guest" that writes through a shared
// mapping, as QEMU does: some chunks written, the rest holes.
type ramFixture struct {
	path string
	f    *os.File
	mem  []byte
	size int64
}

func newRAMFixture(t *testing.T, dir string, size int64) *ramFixture {
	t.Helper()
	p := filepath.Join(dir, "src.ram")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(mem) })
	rng := rand.New(rand.NewPCG(1, 2))
	// Every third chunk gets random bytes; the others stay holes.
	for i := 0; i < chunks(size, preCopyChunk); i += 3 {
		off := int64(i) * preCopyChunk
		for j := off; j < off+chunkLen(i, size, preCopyChunk); j += 8 {
			mem[j] = byte(rng.Uint32())
		}
	}
	return &ramFixture{path: p, f: f, mem: mem, size: size}
}

// preCopy runs a pre-copy of r into a new file at dst while write is
// called in a loop (the guest running), and returns the target's sums.
func (r *ramFixture) preCopy(t *testing.T, dst, token string, write func(n int)) (src, tgt []chunkSum) {
	t.Helper()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := out.Truncate(r.size); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 0; !stop.Load(); n++ {
			write(n)
			time.Sleep(10 * time.Microsecond)
		}
	}()
	pr, pw := io.Pipe()
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		src, werr = writePreCopy(pw, PreCopyHeader{Version: PreCopyStreamVersion, ID: "x", Size: r.size, Chunk: preCopyChunk, Token: token}, r.f)
		pw.CloseWithError(werr)
	}()
	br := bufio.NewReader(pr)
	h, err := readPreCopyHeader(br)
	if err != nil {
		t.Fatal(err)
	}
	tgt, err = readPreCopyBody(br, h, out)
	stop.Store(true)
	wg.Wait()
	if err != nil || werr != nil {
		t.Fatalf("pre-copy: read %v, write %v", err, werr)
	}
	return src, tgt
}

// TestPreCopyDeltaFollowsWrites: a guest writes a known pattern all
// through the pre-copy and once more after it; after the "suspend" the
// delta brings the target's file to exactly the source's bytes, and sends
// only some of the chunks.
func TestPreCopyDeltaFollowsWrites(t *testing.T) {
	dir := t.TempDir()
	size := int64(64<<20 + 8<<10) // a short last chunk, as under TCG
	r := newRAMFixture(t, dir, size)
	tgt := filepath.Join(dir, "dst.ram")
	// The pattern lands in chunks 1, 4, 7 (written before) and 2 (a hole
	// before), and in the short last chunk.
	hot := []int64{1*preCopyChunk + 4096, 4*preCopyChunk + 77, 7*preCopyChunk + 1<<20, 2*preCopyChunk + 5, size - 100}
	src, pre := r.preCopy(t, tgt, "tok", func(n int) {
		for _, off := range hot {
			r.mem[off] = byte(n)
			r.mem[off+1] = byte(n >> 8)
		}
	})
	if len(src) != chunks(size, preCopyChunk) {
		t.Fatalf("%d sums", len(src))
	}
	// Written after the pre-copy ended, before the suspend.
	r.mem[20*preCopyChunk+3] ^= 0xff
	delta := filepath.Join(dir, ramDeltaFile)
	sent, err := writeRAMDelta(r.path, delta, "tok", src)
	if err != nil {
		t.Fatal(err)
	}
	if err := applyRAMDelta(delta, tgt, "tok", pre); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(r.path)
	b, _ := os.ReadFile(tgt)
	if !bytes.Equal(a, b) {
		t.Fatal("the target's ram differs from the source's")
	}
	if sent == 0 || sent > len(hot)+1 {
		t.Fatalf("delta sent %d chunks, want 1..%d", sent, len(hot)+1)
	}
	t.Logf("delta sent %d of %d chunks", sent, len(src))
	// Without a pre-copy's sums every chunk goes.
	all, err := writeRAMDelta(r.path, delta, "tok", nil)
	if err != nil || all != len(src) {
		t.Fatalf("delta without sums: %d chunks, %v", all, err)
	}
}

// TestRAMDeltaCatchesMissedChunk: a change that the dirty tracking
// missed (the delta computed against sums that already include it) leaves
// the target's chunk stale, and the apply refuses it.
func TestRAMDeltaCatchesMissedChunk(t *testing.T) {
	dir := t.TempDir()
	size := int64(16 << 20)
	r := newRAMFixture(t, dir, size)
	tgt := filepath.Join(dir, "dst.ram")
	_, pre := r.preCopy(t, tgt, "tok", func(int) {})
	r.mem[5*preCopyChunk+9] ^= 0x5a
	now, err := sumRAM(r.f, size, preCopyChunk)
	if err != nil {
		t.Fatal(err)
	}
	delta := filepath.Join(dir, ramDeltaFile)
	if n, err := writeRAMDelta(r.path, delta, "tok", now); err != nil || n != 0 {
		t.Fatalf("delta: %d chunks, %v", n, err)
	}
	err = applyRAMDelta(delta, tgt, "tok", pre)
	if errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("apply with a missed chunk: %v, want InvalidArgument", err)
	}
	t.Log(err)
	// A delta that follows another pre-copy is refused too.
	if _, err := writeRAMDelta(r.path, delta, "other", nil); err != nil {
		t.Fatal(err)
	}
	if err := applyRAMDelta(delta, tgt, "tok", pre); errs.ClassOf(err) != errs.FailedPrecondition {
		t.Fatalf("apply of another pre-copy's delta: %v", err)
	}
}

// BenchmarkSumRAM hashes a 512 MiB RAM file on /dev/shm, all of it
// written (as a TCG guest's is): the part of a pre-copied move's suspend
// after the stop.
//
//	go test -run '^$' -bench SumRAM -benchtime 3x ./vm/engine/
func BenchmarkSumRAM(b *testing.B) {
	dir, err := os.MkdirTemp("/dev/shm", "sumram")
	if err != nil {
		b.Skip(err)
	}
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, "ram")
	size := int64(512 << 20)
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{1, 2, 3, 4}, 1<<18)
	for off := int64(0); off < size; off += int64(len(buf)) {
		f.WriteAt(buf, off)
	}
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		if _, err := sumRAM(f, size, preCopyChunk); err != nil {
			b.Fatal(err)
		}
	}
}
