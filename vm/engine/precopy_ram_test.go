package engine

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
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
	src, tgt, _, err := r.preCopyCut(t, dst, token, write, nil, ResumePolicy{})
	if err != nil {
		t.Fatal(err)
	}
	return src, tgt
}

// deltaOnto writes r's delta against the sums src into file delta, applies
// it to the pre-copied file tgt (whose sums are pre) and fails t unless
// tgt then holds exactly r's bytes. It returns how many chunks the delta
// sent.
func (r *ramFixture) deltaOnto(t *testing.T, delta, tgt, token string, src, pre []chunkSum) int {
	t.Helper()
	sent, err := writeRAMDelta(r.path, delta, token, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := applyRAMDelta(delta, tgt, token, pre); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(r.path)
	b, _ := os.ReadFile(tgt)
	if !bytes.Equal(a, b) {
		t.Fatal("the target's ram differs from the source's")
	}
	return sent
}

// preCopyCut is preCopy whose streams drop: the k-th stream (from 0)
// after cut[k] bytes (none if cut has no k-th), resumed as a node does:
// the rest written by a new writePreCopy from the records the reader
// asks after. It returns the source's sums as last sent, the target's,
// and how many times it resumed.
func (r *ramFixture) preCopyCut(t *testing.T, dst, token string, write func(n int), cut []int64, pol ResumePolicy) (src, tgt []chunkSum, resumes int, err error) {
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
	type written struct {
		sums []chunkSum
		log  []preRec
		err  error
	}
	h0 := PreCopyHeader{Version: PreCopyStreamVersion, ID: "x", Size: r.size, Chunk: preCopyChunk, Token: token}
	stream := 0
	start := func(h PreCopyHeader, log []preRec) (io.Reader, chan written) {
		pr, pw := io.Pipe()
		done := make(chan written, 1)
		go func() {
			sums, log, err := writePreCopy(pw, h, fileRAM{r.f}, log)
			pw.CloseWithError(err)
			done <- written{sums, log, err}
		}()
		var rd io.Reader = pr
		if stream < len(cut) {
			rd = &cutPipe{r: pr, left: cut[stream]}
		}
		stream++
		return rd, done
	}
	rd, cur := start(h0, nil)
	var last written
	reopen := func(ctx context.Context, attempt int, at ResumeAt) (io.Reader, error) {
		last = <-cur // the dropped stream's writer has stopped
		if at.Offset < 1 || at.Offset-1 > int64(len(last.log)) {
			t.Errorf("resume at %d of %d records", at.Offset, len(last.log))
		}
		h := h0
		h.Resumed, h.From = true, at.Offset-1
		var nr io.Reader
		nr, cur = start(h, last.log[:at.Offset-1])
		return nr, nil
	}
	br := bufio.NewReader(rd)
	h, err := readPreCopyHeader(br)
	if err != nil {
		t.Fatal(err)
	}
	p := newPreReader(h, out)
	pol.Resumed = func(int, int64, error) { resumes++ }
	err = p.readResuming(context.Background(), br, reopen, pol)
	stop.Store(true)
	if err != nil {
		if pr, ok := rd.(*cutPipe); ok {
			pr.r.CloseWithError(err)
		}
	}
	last = <-cur
	wg.Wait()
	if err == nil && last.err != nil {
		t.Fatalf("pre-copy: write %v", last.err)
	}
	return last.sums, p.sums, resumes, err
}

// cutPipe reads r until left bytes went, then drops it (its writer
// fails) and fails as a dropped connection does.
type cutPipe struct {
	r    *io.PipeReader
	left int64
}

func (c *cutPipe) Read(p []byte) (int, error) {
	if c.left <= 0 {
		err := errs.New(errs.Unavailable, "pre-copy stream dropped (test)")
		c.r.CloseWithError(err)
		return 0, err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// TestPreCopyResumesAfterDrop: pre-copy streams cut in the first pass,
// in the passes and in the closing sums resume from the records the
// target holds, while the guest writes; the target ends with the sums of
// what the source sent last, and the delta after the "suspend" brings it
// to the source's bytes with few chunks. Cut every time, it fails after
// the policy's tries.
func TestPreCopyResumesAfterDrop(t *testing.T) {
	size := int64(16<<20 + 8<<10)
	chunkBytes := int64(1 + preCopyChunk)
	for _, tc := range []struct {
		name string
		cut  []int64
	}{
		{"first-pass", []int64{40*chunkBytes + 999}},
		{"twice", []int64{10*chunkBytes + 5, 3*chunkBytes + 77}},
		{"sums", []int64{-1}}, // set below: in the closing sums
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			r := newRAMFixture(t, dir, size)
			hot := []int64{1*preCopyChunk + 4096, 60*preCopyChunk + 77, 2*preCopyChunk + 5}
			write := func(n int) {
				for _, off := range hot {
					r.mem[off] = byte(n)
					r.mem[off+1] = byte(n >> 8)
				}
			}
			cut := tc.cut
			if cut[0] < 0 {
				// The first pass's bytes (holes are one byte), then into the
				// closing sums: no chunk changes, so no pass record comes.
				first := int64(0)
				for i := 0; i < chunks(size, preCopyChunk); i++ {
					first++
					if i%3 == 0 {
						first += chunkLen(i, size, preCopyChunk)
					}
				}
				b, _ := json.Marshal(PreCopyHeader{Version: PreCopyStreamVersion, ID: "x", Size: size, Chunk: preCopyChunk, Token: "tok"})
				cut = []int64{int64(len(b)) + 1 + first + 1 + 100}
				write = func(int) {}
			}
			tgt := filepath.Join(dir, "dst.ram")
			src, pre, resumes, err := r.preCopyCut(t, tgt, "tok", write, cut, ResumePolicy{Tries: 3, Backoff: time.Millisecond})
			if err != nil {
				t.Fatalf("pre-copy cut at %v: %v", cut, err)
			}
			if resumes != len(cut) {
				t.Fatalf("resumed %d times, want %d", resumes, len(cut))
			}
			for i := range src {
				if src[i] != pre[i] {
					t.Fatalf("chunk %d: the target holds other than the source sent last", i)
				}
			}
			sent := r.deltaOnto(t, filepath.Join(dir, ramDeltaFile), tgt, "tok", src, pre)
			if sent > len(hot) {
				t.Fatalf("delta after a resumed pre-copy sent %d chunks, want <= %d", sent, len(hot))
			}
		})
	}
	t.Run("every-stream-cut", func(t *testing.T) {
		dir := t.TempDir()
		r := newRAMFixture(t, dir, size)
		_, _, resumes, err := r.preCopyCut(t, filepath.Join(dir, "dst.ram"), "tok", func(int) {}, []int64{5 * chunkBytes, 7 * chunkBytes, 9 * chunkBytes}, ResumePolicy{Tries: 2, Backoff: time.Millisecond})
		if err == nil || resumes != 2 || !strings.Contains(err.Error(), "dropped 3 times") {
			t.Fatalf("cut every time: %d resumes, %v; want 2 and the third drop's error", resumes, err)
		}
	})
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
	sent := r.deltaOnto(t, delta, tgt, "tok", src, pre)
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
	now, err := sumRAM(fileRAM{r.f}, size, preCopyChunk)
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
		if _, err := sumRAM(fileRAM{f}, size, preCopyChunk); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPreCopyResumeGivesUpOnALostSource: a source that no longer holds
// the pre-copy (its process restarted: FailedPrecondition from its
// export) ends the resume at once, with that class, rather than after
// the policy's tries and their back-off (e2e memory-in/precopy/src: 18 s
// of tries before the move shipped the whole bundle).
func TestPreCopyResumeGivesUpOnALostSource(t *testing.T) {
	dir := t.TempDir()
	r := newRAMFixture(t, dir, 4<<20)
	h0 := PreCopyHeader{Version: PreCopyStreamVersion, ID: "x", Size: r.size, Chunk: preCopyChunk, Token: "tok"}
	pr, pw := io.Pipe()
	go func() {
		_, _, err := writePreCopy(pw, h0, fileRAM{r.f}, nil)
		pw.CloseWithError(err)
	}()
	br := bufio.NewReader(&cutPipe{r: pr, left: 3 * (1 + preCopyChunk)})
	h, err := readPreCopyHeader(br)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(filepath.Join(dir, "dst.ram"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := out.Truncate(r.size); err != nil {
		t.Fatal(err)
	}
	reopens := 0
	reopen := func(ctx context.Context, attempt int, at ResumeAt) (io.Reader, error) {
		reopens++
		// As preCopyIn's pipe gives the export's error.
		return errReader{errs.New(errs.FailedPrecondition, "resume pre-copy vm x: no pre-copy of it to resume from record %d", at.Offset)}, nil
	}
	err = newPreReader(h, out).readResuming(context.Background(), br, reopen, ResumePolicy{Tries: 4, Backoff: time.Millisecond})
	if reopens != 1 || errs.ClassOf(err) != errs.FailedPrecondition {
		t.Fatalf("a source without the pre-copy: %d reopens, %v (class %v); want 1 and FailedPrecondition", reopens, err, errs.ClassOf(err))
	}
}
