package nodeagent

import (
	"bufio"
	"context"
	"crypto/tls"
	"net"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// Disk streams over the direct path: when the control plane has a direct
// connection to the node (direct.go), a disk stream rides one TLS
// connection of kind "disk" instead of fabric frames (the fabric's 1 MiB
// window and per-frame acks cap a transfer well below the link). The
// control plane dials it first with a ticket bound to the stream's ID
// (the node parks the connection), then calls export_disk or import_disk
// with Direct set; the call takes the parked connection by that ID. A
// control plane or node without the direct path uses the fabric stream.

// parkWait is how long a parked disk connection waits for its call, and a
// call for its connection.
const parkWait = 10 * time.Second

type parkedDisk struct {
	conn  net.Conn
	taken chan struct{} // closed when a call takes conn
	done  chan struct{} // closed when the call is done with it
}

// parkDisk holds direct connection c for the disk call of stream sid
// until that call is done with it (or nobody takes it in parkWait).
func (d *Direct) parkDisk(ctx context.Context, sid string, c net.Conn) error {
	p := &parkedDisk{conn: c, taken: make(chan struct{}), done: make(chan struct{})}
	d.mu.Lock()
	if d.disks == nil {
		d.disks = map[string]*parkedDisk{}
	}
	if d.disks[sid] != nil {
		d.mu.Unlock()
		return errs.New(errs.AlreadyExists, "disk stream %s already has a connection", sid)
	}
	d.disks[sid] = p
	d.mu.Unlock()
	drop := func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.disks[sid] == p {
			delete(d.disks, sid)
			return true
		}
		return false
	}
	select {
	case <-p.taken:
	case <-time.After(parkWait):
		if drop() {
			return errs.New(errs.Unavailable, "disk stream %s: no call took its connection", sid)
		}
		<-p.taken
	case <-ctx.Done():
		if drop() {
			return ctx.Err()
		}
		<-p.taken
	}
	select {
	case <-p.done:
	case <-ctx.Done():
	}
	return nil
}

// takeDisk returns the direct connection parked for stream sid, waiting
// up to parkWait for it; done must be called when the call is done with it.
func (d *Direct) takeDisk(ctx context.Context, sid string) (net.Conn, func(), error) {
	return d.takeDiskWithin(ctx, sid, parkWait)
}

// takeDiskWithin is takeDisk waiting up to wait.
func (d *Direct) takeDiskWithin(ctx context.Context, sid string, wait time.Duration) (net.Conn, func(), error) {
	deadline := time.Now().Add(wait)
	for {
		d.mu.Lock()
		p := d.disks[sid]
		if p != nil {
			delete(d.disks, sid)
		}
		d.mu.Unlock()
		if p != nil {
			close(p.taken)
			return p.conn, func() { p.conn.Close(); close(p.done) }, nil
		}
		if time.Now().After(deadline) {
			return nil, nil, errs.New(errs.Unavailable, "disk stream %s: no direct connection", sid)
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// DiskStreamCounts reports how many disk streams went over the direct
// path and how many over the fabric (for tests and metrics).
func (r *Remote) DiskStreamCounts() (direct, nats int64) {
	return r.diskDirect.Load(), r.diskNATS.Load()
}

// Disk streams move large chunks (engine.DiskStreamBuffer) through TLS,
// which reads and writes one record (16 KiB) per system call on the TCP
// connection beneath it: 64 of each per MiB, each a trip through the TCP
// stack with a small segment. Under a disk stream's TLS connection the
// writer batches a chunk's records into one write (batchConn, batchedTLS)
// and the reader reads ahead in large reads (readAhead).

// readAheadSize is how much a disk stream's connection reads at once.
const readAheadSize = 1 << 20

// readAhead is a connection whose reads, once buffer was called, go
// through a large buffer: a TLS connection over it then reads many
// records per system call. Reads are not made to wait for more data than
// there is (bufio.Reader reads once per call), so it suits any stream.
type readAhead struct {
	net.Conn
	br *bufio.Reader // nil until buffer
}

// buffer makes the following reads go through a buffer of n bytes; it
// must not run concurrently with a Read.
func (r *readAhead) buffer(n int) {
	if r.br == nil {
		r.br = bufio.NewReaderSize(r.Conn, n)
	}
}

func (r *readAhead) Read(p []byte) (int, error) {
	if r.br == nil {
		return r.Conn.Read(p)
	}
	return r.br.Read(p)
}

// batchMax is the most a batchConn holds before it writes.
const batchMax = 2 << 20

// batchConn is a connection whose writes, between batch(true) and
// batch(false), collect in a buffer written at once (at the latest when
// it holds batchMax bytes, and when batching ends). Outside a batch it
// writes through (a TLS handshake's and alerts' writes).
type batchConn struct {
	net.Conn
	mu       sync.Mutex
	batching bool
	buf      []byte
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.Conn.Write(p)
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= batchMax {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (b *batchConn) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

// batch starts or ends a batch; ending one writes what it collected.
func (b *batchConn) batch(on bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = on
	if on {
		if b.buf == nil {
			b.buf = make([]byte, 0, engine.DiskStreamBuffer+engine.DiskStreamBuffer/16)
		}
		return nil
	}
	return b.flushLocked()
}

// batchedTLS is a TLS connection over a batchConn: the records of each
// Write go out in one write of the connection beneath.
type batchedTLS struct {
	*tls.Conn
	raw *batchConn
}

func (c *batchedTLS) Write(p []byte) (int, error) {
	c.raw.batch(true)
	n, err := c.Conn.Write(p)
	if ferr := c.raw.batch(false); err == nil && ferr != nil {
		return 0, ferr
	}
	return n, err
}
