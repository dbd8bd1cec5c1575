package nodeagent

import (
	"context"
	"net"
	"time"

	"github.com/minionsdev/minions/internal/errs"
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
