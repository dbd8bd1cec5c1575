package engine

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// Moving an instance to another host (issue 15) ships its disk as a disk
// stream: one line of JSON (DiskHeader), then exactly Size bytes of the
// disk file (a qcow2 overlay whose backing file is the image, referenced
// by Image and never shipped), then the checksum of those bytes (the
// trailer) in the algorithm the header names (Checksum: CRC32C, 4 bytes,
// in what this engine writes; version 1 streams carry the 32-byte
// SHA-256, and are still read). A stream whose bytes do not match its
// trailer, or that ends early, is refused (errs.InvalidArgument) and
// nothing of it is kept.
//
// Why CRC32C: a disk stream between hosts rides TLS 1.3, whose AEAD
// already authenticates every byte in transit; the trailer is there for
// what TLS cannot see, corruption between the source's disk read and the
// target's disk write (a bug in resuming or splicing, a short or misplaced
// write, a bad page). Against such accidents a 32-bit CRC misses one in
// 2^32 and every burst of up to 32 bits (as Google Cloud Storage, iSCSI
// and ext4 use it), and the CPU computes it at memory speed (SSE 4.2),
// where SHA-256 took more CPU than the rest of the transfer and capped it.

// DiskHeader opens a disk stream: what the instance is, for the importer.
type DiskHeader struct {
	Version   int    `json:"version"` // DiskStreamVersion
	ID        string `json:"id"`
	Name      string `json:"name"`
	Image     string `json:"image"` // resolved reference, "os@version"
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskGiB   int    `json:"disk_gib"`
	Size      int64  `json:"size"` // bytes of the disk file
	// Checksum names the trailer's algorithm (ChecksumCRC32C,
	// ChecksumSHA256); version 1 streams leave it out (SHA-256).
	Checksum string `json:"checksum,omitempty"`
	// Offset, in a resumed export (ExportDiskFrom) only, is where in the
	// disk the stream's bytes start: Size-Offset bytes follow, and the
	// trailer is still the checksum of all Size bytes. Importers read
	// only whole streams (Offset 0); ExportResuming splices a resumed
	// one into the stream it continues on the sending side, and
	// ResumingReader on the importing side (transfer_resume.go).
	Offset int64 `json:"offset,omitempty"`
}

// DiskStreamVersion is the disk stream format this engine writes; it
// reads this one and version 1 (SHA-256 trailers, no Checksum).
const DiskStreamVersion = 2

// The checksums a stream's trailers may be in (DiskHeader.Checksum,
// BundleHeader.Checksum).
const (
	ChecksumCRC32C = "crc32c" // CRC-32 Castagnoli, big-endian: what this engine writes
	ChecksumSHA256 = "sha256" // the only one of disk streams v1 and bundles v2
)

// StreamChecksum is the checksum this engine writes streams with.
const StreamChecksum = ChecksumCRC32C

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// newChecksum returns a fresh hash of algorithm name; "" is SHA-256 (the
// streams of the versions before Checksum was named). An unknown name is
// errs.InvalidArgument.
func newChecksum(name string) (hash.Hash, error) {
	switch name {
	case ChecksumCRC32C:
		return crc32.New(castagnoli), nil
	case ChecksumSHA256, "":
		return sha256.New(), nil
	}
	return nil, errs.New(errs.InvalidArgument, "unknown checksum %q", name)
}

// streamChecksum checks the checksum named by a header of version v,
// where versions before named (the first to name one) are SHA-256 only.
func streamChecksum(v, named int, name string) error {
	if v < named {
		if name != "" {
			return errs.New(errs.InvalidArgument, "version %d names checksum %q", v, name)
		}
		return nil
	}
	if name == "" {
		return errs.New(errs.InvalidArgument, "version %d names no checksum", v)
	}
	_, err := newChecksum(name)
	return err
}

const maxDiskHeader = 64 << 10

// DiskStreamBuffer is the size of the chunks disk streams are read,
// hashed and written in: large, so a GiB costs few system calls.
const DiskStreamBuffer = 1 << 20

// hashCopy copies exactly n bytes (fewer if src ends first) from src to
// dst, hashing them into sum, in DiskStreamBuffer chunks through a
// pipeline: the next chunk is read while this one is hashed and written
// at once, so reading (a TLS connection's decryption, a file), hashing
// and writing (a connection's encryption, the page cache) use the cores
// there are rather than one after another. rerr is src's error (io.EOF
// or io.ErrUnexpectedEOF when it ended early), werr dst's.
func hashCopy(dst io.Writer, src io.Reader, n int64, sum hash.Hash) (copied int64, rerr, werr error) {
	return hashCopySize(dst, src, n, sum, DiskStreamBuffer)
}

// asyncWriter is a writer that keeps several writes in flight
// (directWriter): writeAsync starts a write of b and calls done once b
// may be reused; wait waits for them all and returns the first error.
type asyncWriter interface {
	writeAsync(b []byte, done func()) error
	wait() error
	inFlight() int
}

// hashCopySize is hashCopy in chunks of size bytes (directAlign-aligned
// buffers: see directWriter). Where dst is an asyncWriter its writes go
// on behind the copy, up to its inFlight() at once, each chunk's buffer
// reused once it is both hashed and written; the chunks are still hashed
// in order, and hashCopySize returns only after every write ended.
func hashCopySize(dst io.Writer, src io.Reader, n int64, sum hash.Hash, size int) (copied int64, rerr, werr error) {
	type chunk struct {
		b   []byte
		err error
	}
	const depth = 3
	aw, async := dst.(asyncWriter)
	bufs := depth
	if async {
		bufs += aw.inFlight()
	}
	free := make(chan []byte, bufs)
	for range bufs {
		free <- alignedBuffer(size)
	}
	chunks := make(chan chunk, bufs)
	stop := make(chan struct{})
	read := make(chan struct{})
	go func() {
		defer close(read)
		defer close(chunks)
		for left := n; left > 0; {
			var b []byte
			select {
			case b = <-free:
			case <-stop:
				return
			}
			m, err := io.ReadFull(src, b[:min(int64(len(b)), left)])
			left -= int64(m)
			chunks <- chunk{b[:m], err}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		close(stop)
		for range chunks { // let the reader end
		}
		<-read
	}()
	if async {
		defer func() {
			if err := aw.wait(); err != nil && werr == nil && rerr == nil {
				werr = err
			}
		}()
	}
	hashed := make(chan struct{})
	for c := range chunks {
		if len(c.b) > 0 {
			if async {
				// Free once written and hashed, whichever ends last.
				var users atomic.Int32
				users.Store(2)
				b := c.b[:cap(c.b)]
				release := func() {
					if users.Add(-1) == 0 {
						free <- b
					}
				}
				err := aw.writeAsync(c.b, release)
				sum.Write(c.b)
				release()
				if err != nil {
					return copied, nil, err
				}
				copied += int64(len(c.b))
				if c.err != nil {
					return copied, c.err, nil
				}
				continue
			}
			go func() { sum.Write(c.b); hashed <- struct{}{} }()
			_, err := dst.Write(c.b)
			<-hashed
			if err != nil {
				return copied, nil, err
			}
			copied += int64(len(c.b))
		}
		if c.err != nil {
			return copied, c.err, nil
		}
		free <- c.b[:cap(c.b)]
	}
	return copied, nil, nil
}

// WriteDiskStream writes h, then h.Size bytes of disk, then their
// checksum: h.Checksum's algorithm, StreamChecksum if it is "".
func WriteDiskStream(w io.Writer, h DiskHeader, disk io.Reader) error {
	return writeDiskStream(w, h, disk, DiskStreamBuffer)
}

// writeDiskStream is WriteDiskStream reading disk in chunks of size.
func writeDiskStream(w io.Writer, h DiskHeader, disk io.Reader, size int) error {
	h.Version = DiskStreamVersion
	if h.Checksum == "" {
		h.Checksum = StreamChecksum
	}
	sum, err := newChecksum(h.Checksum)
	if err != nil {
		return err
	}
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("disk stream header: %w", err)
	}
	return writeBodySize(w, disk, h.Size, sum, "disk stream", size)
}

// writeBody sends size bytes of r to w through sum (which may already
// hold bytes hashed but not sent: a resumed stream), then sum as the
// trailer. what names the stream in errors.
func writeBody(w io.Writer, r io.Reader, size int64, sum hash.Hash, what string) error {
	return writeBodySize(w, r, size, sum, what, DiskStreamBuffer)
}

// writeBodySize is writeBody in chunks of chunk bytes.
func writeBodySize(w io.Writer, r io.Reader, size int64, sum hash.Hash, what string, chunk int) error {
	n, rerr, werr := hashCopySize(w, r, size, sum, chunk)
	if werr != nil {
		return fmt.Errorf("%s: %w", what, werr)
	}
	if rerr != nil && rerr != io.EOF && rerr != io.ErrUnexpectedEOF {
		return fmt.Errorf("%s: %w", what, rerr)
	}
	if n != size {
		return fmt.Errorf("%s: %d bytes to send, not %d", what, n, size)
	}
	if _, err := w.Write(sum.Sum(nil)); err != nil {
		return fmt.Errorf("%s trailer: %w", what, err)
	}
	return nil
}

// readHeader reads a stream's JSON header line from br into v; what
// names the stream in errors.
func readHeader(br *bufio.Reader, what string, v any) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return errs.New(errs.InvalidArgument, "%s: header too long", what)
		}
		return errs.New(errs.InvalidArgument, "%s: no header: %v", what, err)
	}
	if err := json.Unmarshal(line, v); err != nil {
		return errs.New(errs.InvalidArgument, "%s: bad header: %v", what, err)
	}
	return nil
}

// WriteDiskStreamFrom writes h (with Offset off), then the bytes of disk
// from off to h.Size, then the checksum of all h.Size bytes (the first
// off are read and hashed, not written): a resumed stream. Its checksum
// is chosen as WriteDiskStream's, so it matches the stream it resumes.
func WriteDiskStreamFrom(w io.Writer, h DiskHeader, disk io.ReaderAt, off int64) error {
	if off < 0 || off > h.Size {
		return errs.New(errs.InvalidArgument, "disk stream: offset %d outside the disk's %d bytes", off, h.Size)
	}
	h.Version, h.Offset = DiskStreamVersion, off
	if h.Checksum == "" {
		h.Checksum = StreamChecksum
	}
	sum, err := newChecksum(h.Checksum)
	if err != nil {
		return err
	}
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if n, err := io.CopyBuffer(sum, io.NewSectionReader(disk, 0, off), make([]byte, DiskStreamBuffer)); err != nil || n != off {
		return fmt.Errorf("disk stream: hash the first %d bytes: %d, %v", off, n, err)
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("disk stream header: %w", err)
	}
	return writeBody(w, io.NewSectionReader(disk, off, h.Size-off), h.Size-off, sum, "disk stream")
}

// ReadDiskHeader reads a disk stream's header from br.
func ReadDiskHeader(br *bufio.Reader) (DiskHeader, error) {
	var h DiskHeader
	if err := readHeader(br, "disk stream", &h); err != nil {
		return h, err
	}
	if h.Version != 1 && h.Version != DiskStreamVersion {
		return h, errs.New(errs.InvalidArgument, "disk stream: version %d, this host reads 1 to %d", h.Version, DiskStreamVersion)
	}
	if err := streamChecksum(h.Version, 2, h.Checksum); err != nil {
		return h, fmt.Errorf("disk stream: %w", err)
	}
	if h.Size < 0 || h.Offset < 0 || h.Offset > h.Size || !vm.IsID(h.ID) {
		return h, errs.New(errs.InvalidArgument, "disk stream: bad header %+v", h)
	}
	return h, nil
}

// ReadDiskBody copies h.Size bytes of br into dst and checks the trailer
// (in h.Checksum's algorithm, "" for SHA-256); a mismatch or a short
// stream is errs.InvalidArgument.
func ReadDiskBody(br *bufio.Reader, h DiskHeader, dst io.Writer) error {
	return readBody(br, h, dst, DiskStreamBuffer)
}

// readDiskFile is ReadDiskBody into file f, written past the page cache
// where f's file system allows it (directWriter), then made durable
// (datasync): an import says it is done only once the disk it wrote
// would survive the target host's crash. O_DIRECT alone does not give
// that: the device may still hold the writes in its volatile cache, and
// the file's newly allocated blocks are not recorded yet.
func readDiskFile(br *bufio.Reader, h DiskHeader, f *os.File) error {
	if err := preallocate(f, h.Size); err != nil {
		return fmt.Errorf("disk stream: allocate %d bytes for %s: %w", h.Size, filepath.Base(f.Name()), err)
	}
	if err := readBody(br, h, newDirectWriter(f), DirectChunk); err != nil {
		return err
	}
	if err := datasync(f); err != nil {
		return fmt.Errorf("disk stream: sync %s: %w", filepath.Base(f.Name()), err)
	}
	return nil
}

// datasync flushes f's data (and what is needed to read it back) to its
// device; tests replace it.
var datasync = func(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }

// syncDir makes the entries of directory dir (a rename into it) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readBody is ReadDiskBody in chunks of size bytes.
func readBody(br *bufio.Reader, h DiskHeader, dst io.Writer, size int) error {
	if h.Offset != 0 {
		return errs.New(errs.InvalidArgument, "disk stream: a resumed stream (offset %d) cannot be imported on its own", h.Offset)
	}
	sum, err := newChecksum(h.Checksum)
	if err != nil {
		return fmt.Errorf("disk stream: %w", err)
	}
	// Whole buffers (never past the disk's end): a connection's reads
	// are small, and writes and hashing are cheaper in large chunks.
	n, rerr, werr := hashCopySize(dst, br, h.Size, sum, size)
	if werr != nil {
		return fmt.Errorf("disk stream: %w", werr)
	}
	if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
		return errs.New(errs.InvalidArgument, "disk stream ended after %d of %d bytes", n, h.Size)
	}
	if rerr != nil {
		return fmt.Errorf("disk stream: %w", rerr)
	}
	trailer := make([]byte, sum.Size())
	if _, err := io.ReadFull(br, trailer); err != nil {
		return errs.New(errs.InvalidArgument, "disk stream: no checksum trailer: %v", err)
	}
	if got := sum.Sum(nil); !bytes.Equal(got, trailer) {
		k := min(len(got), 8)
		return errs.New(errs.InvalidArgument, "disk stream: checksum mismatch (sent %x, received %x)", trailer[:k], got[:k])
	}
	return nil
}
