package engine

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// The RAM of a move with memory, pre-copied (issue 15): while the VM
// runs, its RAM file goes to the target as a pre-copy stream; after the
// suspend, only the 128 KiB chunks (preCopyChunk) whose SHA-256 differs from what the
// pre-copy sent go, as the bundle's file move-state/ram.delta, with the
// sums of every chunk of the whole RAM as it was saved. The target
// applies the delta to its pre-copied file and checks every chunk's sum
// (those it received in the pre-copy and those of the delta) against the
// source's: the guest resumes from exactly the source's memory, or the
// move fails and the source resumes.
//
// Dirty tracking by sums, not by the kernel: this host's kernel has no
// soft-dirty bits (CONFIG_MEM_SOFT_DIRTY off; see the qemu package's
// TestSoftDirtySharedTmpfs), and sums also catch writes to the file that
// bypass QEMU's mapping. Chunks that are holes in the source's tmpfs file
// (never touched by the guest) are neither read nor sent.
//
// Pre-copy stream: one line of JSON (PreCopyHeader), then for each chunk
// one byte (0: a hole, nothing follows; 1: the chunk's bytes follow);
// then, for the chunks that changed while the first pass went (hashed
// again, up to preCopyPasses times), one byte 2, the chunk's index (4
// bytes, big-endian) and its bytes; then one byte 3 and the SHA-256 of
// every chunk as last sent (a hole's: of zeros), 32 bytes each.
//
// A pre-copy stream that drops resumes (the disk streams' Reopen and
// ResumePolicy): the target keeps its file and the sums of what it
// holds, and asks for the rest after the records it has (ResumeAt.Offset
// is that count plus one: 0 asks for a fresh pre-copy). The source keeps
// the records it wrote (preRec), so it knows what the target holds
// without being told each sum; the rest is a stream whose header says
// Resumed and From, no first pass, then every chunk that differs from
// what the target holds, the passes, and the closing sums as usual.
//
// ram.delta: one line of JSON (RAMDeltaHeader), the SHA-256 of every
// chunk of the saved RAM (32 bytes each), then the bytes of each chunk it
// lists in Send, in that order.

// preCopyChunk is the unit of the pre-copy's sums and of the delta: small
// enough that scattered guest writes dirty little besides themselves.
const preCopyChunk = 128 << 10

// preCopyPasses bounds the passes over the chunks that changed while the
// pre-copy went; it stops early once a pass sends under preCopyEnough.
const (
	preCopyPasses = 3
	preCopyEnough = 4 << 20
)

// PreCopyStreamVersion is the pre-copy stream format this engine writes
// and reads.
const PreCopyStreamVersion = 1

// ramDeltaFile is the delta's name in the saved state (move-state/).
const ramDeltaFile = "ram.delta"

// PreCopyHeader opens a pre-copy stream.
type PreCopyHeader struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	Size    int64  `json:"size"`  // the RAM file's
	Chunk   int64  `json:"chunk"` // preCopyChunk
	// Token names this pre-copy: the delta says which one it follows.
	Token string `json:"token"`
	// Resumed: this stream is the rest of pre-copy Token after its
	// target's first From records (a stream of it that dropped); no
	// first pass, its records start with every chunk the target lacks.
	Resumed bool  `json:"resumed,omitempty"`
	From    int64 `json:"from,omitempty"`
}

// RAMDeltaHeader opens ram.delta.
type RAMDeltaHeader struct {
	Version int    `json:"version"` // PreCopyStreamVersion
	Token   string `json:"token"`   // the pre-copy's
	Size    int64  `json:"size"`
	Chunk   int64  `json:"chunk"`
	// Send lists the chunks whose bytes follow the sums, ascending.
	Send []int `json:"send"`
}

type chunkSum [sha256.Size]byte

func chunks(size, chunk int64) int { return int((size + chunk - 1) / chunk) }

func chunkLen(i int, size, chunk int64) int64 { return min(chunk, size-int64(i)*chunk) }

var zeroSums sync.Map // length -> chunkSum

// zeroSum is the sum of n zero bytes.
func zeroSum(n int64) chunkSum {
	if s, ok := zeroSums.Load(n); ok {
		return s.(chunkSum)
	}
	s := chunkSum(sha256.Sum256(make([]byte, n)))
	zeroSums.Store(n, s)
	return s
}

// fileRAM is a RAM file as a hypervisor.RAMReader: what a pre-copy reads
// a VM's RAM from when it is a file of its own (else the driver's reader).
type fileRAM struct{ *os.File }

func (f fileRAM) Hole(off, n int64) bool { return isHole(f.File, off, n) }

// isHole reports whether f's bytes [off, off+n) are all a hole.
func isHole(f *os.File, off, n int64) bool {
	data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
	if errors.Is(err, unix.ENXIO) {
		return true
	}
	return err == nil && data >= off+n
}

// preRec is one record of a pre-copy as written: chunk idx now holds
// bytes whose sum is sum on the target (a hole's: of zeros). A stream's
// records, in order, are its first pass's chunks (one each, holes
// included) and then its changed chunks (record 2); a resumed stream's
// are all of the second kind. The records a target holds say what its
// file holds: a chunk no record named is still a hole.
type preRec struct {
	idx int32
	sum chunkSum
}

// preSums is what the target holds after records log: the sum of every
// chunk of a RAM file of size bytes.
func preSums(size, chunk int64, log []preRec) []chunkSum {
	n := chunks(size, chunk)
	sums := make([]chunkSum, n)
	for i := range sums {
		sums[i] = zeroSum(chunkLen(i, size, chunk))
	}
	for _, r := range log {
		sums[r.idx] = r.sum
	}
	return sums
}

// writePreCopy writes the pre-copy stream of RAM f (size bytes, the VM
// running) to w: a whole one, or (h.Resumed) the rest of one whose
// target holds the records log (its first h.From). It returns the sums
// of the chunks as sent and the records written, log's first; on
// failure, as far as they got (some perhaps never left this host: the
// target says how many it has when it asks for the rest).
func writePreCopy(w io.Writer, h PreCopyHeader, f hypervisor.RAMReader, log []preRec) ([]chunkSum, []preRec, error) {
	log = slices.Clone(log)
	b, err := json.Marshal(h)
	if err != nil {
		return nil, log, err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	if _, err := bw.Write(append(b, '\n')); err != nil {
		return nil, log, err
	}
	n := chunks(h.Size, h.Chunk)
	sums := preSums(h.Size, h.Chunk, log)
	buf := make([]byte, h.Chunk)
	for i := 0; i < n && !h.Resumed; i++ {
		off, l := int64(i)*h.Chunk, chunkLen(i, h.Size, h.Chunk)
		if f.Hole(off, l) {
			sums[i] = zeroSum(l)
			log = append(log, preRec{int32(i), sums[i]})
			if err := bw.WriteByte(0); err != nil {
				return nil, log, err
			}
			continue
		}
		if _, err := f.ReadAt(buf[:l], off); err != nil {
			return nil, log, err
		}
		sums[i] = sha256.Sum256(buf[:l])
		log = append(log, preRec{int32(i), sums[i]})
		if err := bw.WriteByte(1); err != nil {
			return nil, log, err
		}
		if _, err := bw.Write(buf[:l]); err != nil {
			return nil, log, err
		}
	}
	// The chunks the running guest changed meanwhile, again; a resumed
	// stream's first pass is every chunk the target lacks.
	passes := preCopyPasses
	if h.Resumed {
		passes++
	}
	for pass := 0; pass < passes; pass++ {
		now, err := sumRAM(f, h.Size, h.Chunk)
		if err != nil {
			return nil, log, err
		}
		sent := int64(0)
		for i := range now {
			if now[i] == sums[i] {
				continue
			}
			off, l := int64(i)*h.Chunk, chunkLen(i, h.Size, h.Chunk)
			if _, err := f.ReadAt(buf[:l], off); err != nil {
				return nil, log, err
			}
			sums[i] = sha256.Sum256(buf[:l])
			log = append(log, preRec{int32(i), sums[i]})
			var rec [5]byte
			rec[0] = 2
			binary.BigEndian.PutUint32(rec[1:], uint32(i))
			if _, err := bw.Write(rec[:]); err != nil {
				return nil, log, err
			}
			if _, err := bw.Write(buf[:l]); err != nil {
				return nil, log, err
			}
			sent += l
		}
		if sent < preCopyEnough {
			break
		}
	}
	if err := bw.WriteByte(3); err != nil {
		return nil, log, err
	}
	for _, s := range sums {
		if _, err := bw.Write(s[:]); err != nil {
			return nil, log, err
		}
	}
	return sums, log, bw.Flush()
}

// readPreCopyHeader reads and checks a pre-copy stream's header.
func readPreCopyHeader(br *bufio.Reader) (PreCopyHeader, error) {
	var h PreCopyHeader
	if err := readHeader(br, "pre-copy", &h); err != nil {
		return h, err
	}
	if err := h.check(); err != nil {
		return h, err
	}
	return h, nil
}

func (h PreCopyHeader) check() error {
	if h.Version != PreCopyStreamVersion || h.Chunk != preCopyChunk || h.Size <= 0 || h.Size > 1<<40 || h.Token == "" || h.From < 0 {
		return errs.New(errs.InvalidArgument, "pre-copy: bad header (version %d, size %d, chunk %d, from %d)", h.Version, h.Size, h.Chunk, h.From)
	}
	return nil
}

// preReader reads a pre-copy stream's body into a RAM file, one record at
// a time: after a stream that dropped, it reads on from the rest
// (resumed) with what it holds, which Records counts.
type preReader struct {
	h    PreCopyHeader // the first stream's
	out  *os.File      // h.Size bytes, all holes at first
	sums []chunkSum    // of what out holds
	next int           // the first pass's next chunk
	recs int64         // records held
	buf  []byte
}

func newPreReader(h PreCopyHeader, out *os.File) *preReader {
	return &preReader{h: h, out: out, sums: preSums(h.Size, h.Chunk, nil), buf: make([]byte, h.Chunk)}
}

// read reads records from br up to the stream's end and checks the sums
// that close it; a failure leaves every record before it held.
func (p *preReader) read(br *bufio.Reader) error {
	h := p.h
	n := chunks(h.Size, h.Chunk)
	buf := p.buf
	for ; p.next < n; p.next++ {
		i := p.next
		off, l := int64(i)*h.Chunk, chunkLen(i, h.Size, h.Chunk)
		kind, err := br.ReadByte()
		if err != nil {
			return unexpected(err)
		}
		switch kind {
		case 0:
		case 1:
			if _, err := io.ReadFull(br, buf[:l]); err != nil {
				return unexpected(err)
			}
			if _, err := p.out.WriteAt(buf[:l], off); err != nil {
				return fmt.Errorf("write ram: %w", err)
			}
			p.sums[i] = sha256.Sum256(buf[:l])
		default:
			return errs.New(errs.InvalidArgument, "pre-copy: bad chunk kind %d", kind)
		}
		p.recs++
	}
	for {
		kind, err := br.ReadByte()
		if err != nil {
			return unexpected(err)
		}
		if kind == 3 {
			break
		}
		if kind != 2 {
			return errs.New(errs.InvalidArgument, "pre-copy: bad record %d", kind)
		}
		var idx [4]byte
		if _, err := io.ReadFull(br, idx[:]); err != nil {
			return unexpected(err)
		}
		i := int(binary.BigEndian.Uint32(idx[:]))
		if i >= n {
			return errs.New(errs.InvalidArgument, "pre-copy: chunk %d of %d", i, n)
		}
		off, l := int64(i)*h.Chunk, chunkLen(i, h.Size, h.Chunk)
		if _, err := io.ReadFull(br, buf[:l]); err != nil {
			return unexpected(err)
		}
		if _, err := p.out.WriteAt(buf[:l], off); err != nil {
			return fmt.Errorf("write ram: %w", err)
		}
		p.sums[i] = sha256.Sum256(buf[:l])
		p.recs++
	}
	var s chunkSum
	for i := 0; i < n; i++ {
		if _, err := io.ReadFull(br, s[:]); err != nil {
			return unexpected(err)
		}
		if s != p.sums[i] {
			return errs.New(errs.InvalidArgument, "pre-copy: chunk %d does not match its sum", i)
		}
	}
	return nil
}

// resumed checks the header of the rest of the stream (read from br):
// the same pre-copy, from the records p holds; its records follow.
func (p *preReader) resumed(br *bufio.Reader) error {
	line, err := br.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return errs.New(errs.InvalidArgument, "resumed pre-copy: header too long")
	}
	if err != nil {
		if errs.ClassOf(err) == errs.FailedPrecondition {
			// The source no longer holds the pre-copy (its process
			// restarted): no try will find it.
			return fmt.Errorf("resumed pre-copy: %w", err)
		}
		return errs.New(errs.Unavailable, "resumed pre-copy: no header: %v", err) // it dropped again
	}
	var h PreCopyHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return errs.New(errs.InvalidArgument, "resumed pre-copy: bad header: %v", err)
	}
	if err := h.check(); err != nil {
		return err
	}
	if !h.Resumed || h.Token != p.h.Token || h.ID != p.h.ID || h.Size != p.h.Size || h.From != p.recs {
		return errs.New(errs.InvalidArgument, "resumed pre-copy: vm %s, pre-copy %s from record %d, want vm %s, %s from %d",
			h.ID, h.Token, h.From, p.h.ID, p.h.Token, p.recs)
	}
	p.next = chunks(p.h.Size, p.h.Chunk) // a resumed stream has no first pass
	return nil
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// sumRAM returns the sum of every chunk of RAM file f (size bytes; its
// VM paused), hashed by several goroutines; holes are not read. It reads
// with pread, not through a mapping of its own: a fault per page of a
// fresh mapping made 512 MiB take 4.5 s here, pread 2.2 s
// (BenchmarkSumRAM, both at load 15-21 on 2 cores).
func sumRAM(f hypervisor.RAMReader, size, chunk int64) ([]chunkSum, error) {
	n := chunks(size, chunk)
	sums := make([]chunkSum, n)
	workers := min(runtime.NumCPU(), 4)
	errc := make(chan error, workers)
	var wg sync.WaitGroup
	next := make(chan int, n)
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, chunk)
			for i := range next {
				off, l := int64(i)*chunk, chunkLen(i, size, chunk)
				if f.Hole(off, l) {
					sums[i] = zeroSum(l)
					continue
				}
				if _, err := f.ReadAt(buf[:l], off); err != nil {
					errc <- fmt.Errorf("read ram: %w", err)
					return
				}
				sums[i] = sha256.Sum256(buf[:l])
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return nil, err
	default:
	}
	return sums, nil
}

// writeRAMDelta writes to dst the delta of RAM file ram (its VM paused)
// against pre, the sums of what the pre-copy token sent (nil: every chunk
// is sent). It returns the number of chunks sent.
func writeRAMDelta(ram, dst, token string, pre []chunkSum) (int, error) {
	f, err := os.Open(ram)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := st.Size()
	sums, err := sumRAM(fileRAM{f}, size, preCopyChunk)
	if err != nil {
		return 0, err
	}
	h := RAMDeltaHeader{Version: PreCopyStreamVersion, Token: token, Size: size, Chunk: preCopyChunk}
	for i, s := range sums {
		if len(pre) != len(sums) || pre[i] != s {
			h.Send = append(h.Send, i)
		}
	}
	b, err := json.Marshal(h)
	if err != nil {
		return 0, err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return 0, err
	}
	err = func() error {
		bw := bufio.NewWriterSize(out, 1<<20)
		if _, err := bw.Write(append(b, '\n')); err != nil {
			return err
		}
		for _, s := range sums {
			if _, err := bw.Write(s[:]); err != nil {
				return err
			}
		}
		for _, i := range h.Send {
			if _, err := io.Copy(bw, io.NewSectionReader(f, int64(i)*preCopyChunk, chunkLen(i, size, preCopyChunk))); err != nil {
				return err
			}
		}
		return bw.Flush()
	}()
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return 0, err
	}
	return len(h.Send), nil
}

// applyRAMDelta applies delta file delta to RAM file ram, which holds
// pre-copy token (whose chunks' sums are pre), and checks every chunk of
// the result against the source's sums: a chunk that differs (a change
// the delta missed, a corrupt byte) is errs.InvalidArgument.
func applyRAMDelta(delta, ram, token string, pre []chunkSum) error {
	in, err := os.Open(delta)
	if err != nil {
		return err
	}
	defer in.Close()
	br := bufio.NewReaderSize(in, 1<<20)
	var h RAMDeltaHeader
	if err := readHeader(br, "ram delta", &h); err != nil {
		return err
	}
	bad := func(format string, a ...any) error {
		return errs.New(errs.InvalidArgument, "ram delta: "+format, a...)
	}
	n := chunks(h.Size, preCopyChunk)
	switch {
	case h.Version != PreCopyStreamVersion || h.Chunk != preCopyChunk:
		return bad("version %d, chunk %d", h.Version, h.Chunk)
	case h.Token != token:
		return errs.New(errs.FailedPrecondition, "ram delta: it follows pre-copy %q, this host holds %q", h.Token, token)
	case len(pre) != n:
		return bad("%d chunks, the pre-copy has %d", n, len(pre))
	}
	want := make([]chunkSum, n)
	for i := range want {
		if _, err := io.ReadFull(br, want[i][:]); err != nil {
			return bad("sums: %v", unexpected(err))
		}
	}
	out, err := os.OpenFile(ram, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	if st, err := out.Stat(); err != nil || st.Size() != h.Size {
		return bad("ram file is not %d bytes (%v)", h.Size, err)
	}
	got := append([]chunkSum(nil), pre...)
	buf := make([]byte, preCopyChunk)
	last := -1
	for _, i := range h.Send {
		if i <= last || i >= n {
			return bad("chunk %d out of order", i)
		}
		last = i
		l := chunkLen(i, h.Size, preCopyChunk)
		if _, err := io.ReadFull(br, buf[:l]); err != nil {
			return bad("chunk %d: %v", i, unexpected(err))
		}
		if _, err := out.WriteAt(buf[:l], int64(i)*preCopyChunk); err != nil {
			return err
		}
		got[i] = sha256.Sum256(buf[:l])
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return bad("bytes after the last chunk")
	}
	for i := range got {
		if got[i] != want[i] {
			return bad("chunk %d of the ram differs from the source's after the delta", i)
		}
	}
	return nil
}
