package nodeagent

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

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

// A disk stream that stops moving without either end seeing a reset (a
// link that silently drops everything, a middlebox that lost the flow, a
// relay that stopped forwarding) is found by a progress deadline on its
// connection (stallConn): once data has moved, a read that gets nothing
// for diskStall, or a write that cannot hand diskWritePiece bytes to the
// kernel within diskStall, fails as errs.Unavailable, and the stream
// resumes (transfer_resume.go) instead of waiting out transferIdle. The
// connection's TCP keepalive probes every second after a second of
// silence, and TCP_USER_TIMEOUT is diskStall, so the kernel also gives
// up on a peer that stopped answering while the stream waits (for its
// first byte, say: a resumed export first waits for the instance's lock
// and checksums the disk up to its offset, which may take longer than
// diskStall). The cost: a live peer that does not read for diskStall (a
// disk write that blocks that long) ends the stream, which then resumes.

// diskStall is how long a disk stream may move nothing, once it moved
// something, before it counts as dropped.
var diskStall = 5 * time.Second

// diskWritePiece is the most a disk connection hands the kernel per
// deadline: the link must move at least this much per diskStall
// (0.8 MiB/s) for a stream not to count as stalled.
const diskWritePiece = 4 << 20

// stallConn is a connection with a progress deadline (see above) once
// arm was called. Reads wait without one until the first byte after
// arm arrived. Not safe for concurrent Reads (or Writes).
type stallConn struct {
	net.Conn
	stall atomic.Int64 // time.Duration; 0 until arm
	seen  bool         // a byte was read since arm
}

// arm starts the progress deadline d on c, and the kernel's own probing
// (keepalive, TCP_USER_TIMEOUT of d) where c is TCP.
func (c *stallConn) arm(d time.Duration) {
	c.stall.Store(int64(d))
	tcpProbe(c.Conn, d)
}

func (c *stallConn) Read(p []byte) (int, error) {
	d := time.Duration(c.stall.Load())
	if d > 0 && c.seen {
		c.Conn.SetReadDeadline(time.Now().Add(d))
	}
	n, err := c.Conn.Read(p)
	if n > 0 && d > 0 {
		c.seen = true
	}
	if err != nil && d > 0 && c.seen && stalled(err) {
		return n, errs.New(errs.Unavailable, "disk stream stalled: nothing arrived for %s (%v)", d, err)
	}
	return n, err
}

func (c *stallConn) Write(p []byte) (int, error) {
	d := time.Duration(c.stall.Load())
	if d <= 0 {
		return c.Conn.Write(p)
	}
	n := 0
	for n < len(p) {
		k := min(len(p)-n, diskWritePiece)
		c.Conn.SetWriteDeadline(time.Now().Add(d))
		m, err := c.Conn.Write(p[n : n+k])
		n += m
		if err != nil {
			if stalled(err) {
				return n, errs.New(errs.Unavailable, "disk stream stalled: the peer took nothing for %s (%v)", d, err)
			}
			return n, err
		}
	}
	return n, nil
}

// stalled reports whether err is a stall found by the progress deadline
// or by the kernel's own probing (tcpProbe: TCP_USER_TIMEOUT and
// keepalive end the connection with ETIMEDOUT, whichever comes first).
func stalled(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, unix.ETIMEDOUT)
}

// tcpProbe makes the kernel find a dead peer of TCP connection c within
// about d: keepalive probes every second after a second of silence (at
// most d/1s of them), and TCP_USER_TIMEOUT d for data it sent that the
// peer does not acknowledge. Best effort: c may be no TCP connection.
func tcpProbe(c net.Conn, d time.Duration) {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn() // a TLS connection's TCP connection
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return
	}
	tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: time.Second, Interval: time.Second, Count: max(int(d/time.Second), 1)})
	if rc, err := tc.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(d/time.Millisecond))
		})
	}
}
