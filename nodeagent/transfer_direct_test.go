package nodeagent

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
)

// countConn counts a connection's Read and Write calls.
type countConn struct {
	net.Conn
	reads, writes atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error)  { c.reads.Add(1); return c.Conn.Read(p) }
func (c *countConn) Write(p []byte) (int, error) { c.writes.Add(1); return c.Conn.Write(p) }

// TestDiskConnBatching: 8 MiB written in 1 MiB Writes through TLS arrive
// intact, and with the disk stream's wrappers (batchedTLS writing,
// readAhead reading) in a handful of the connection's writes and reads
// instead of one per 16 KiB record (as plain TLS, measured alongside,
// does).
func TestDiskConnBatching(t *testing.T) {
	cert, _, err := fabric.NodeCertificate("t")
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 31)
	}
	run := func(t *testing.T, wrapped bool) (writes, reads int64) {
		a, b := net.Pipe()
		ca, cb := &countConn{Conn: a}, &countConn{Conn: b}
		ra := &readAhead{Conn: cb}
		srv := tls.Server(ra, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		var cli net.Conn
		var bc *batchConn
		ccfg := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
		if wrapped {
			bc = &batchConn{Conn: ca}
			cli = &batchedTLS{Conn: tls.Client(bc, ccfg), raw: bc}
		} else {
			cli = tls.Client(ca, ccfg)
		}
		defer cli.Close()
		defer srv.Close()
		hs := make(chan error, 1)
		go func() { hs <- srv.Handshake() }()
		if err := cli.(interface{ Handshake() error }).Handshake(); err != nil {
			t.Fatal(err)
		}
		if err := <-hs; err != nil {
			t.Fatal(err)
		}
		if wrapped {
			ra.buffer(readAheadSize)
		}
		w0, r0 := ca.writes.Load(), cb.reads.Load()
		sent := make(chan error, 1)
		go func() {
			for off := 0; off < len(data); off += 1 << 20 {
				if _, err := cli.Write(data[off : off+1<<20]); err != nil {
					sent <- err
					return
				}
			}
			sent <- nil
		}()
		got := make([]byte, len(data))
		if _, err := io.ReadFull(srv, got); err != nil {
			t.Fatal(err)
		}
		if err := <-sent; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("the bytes changed on the way")
		}
		return ca.writes.Load() - w0, cb.reads.Load() - r0
	}
	w, r := run(t, true)
	pw, pr := run(t, false)
	t.Logf("8 MiB in 1 MiB writes: batched %d writes, %d reads; plain TLS %d writes, %d reads", w, r, pw, pr)
	if w > 16 || r > 32 {
		t.Errorf("batched: %d writes and %d reads of the connection, want at most 16 and 32", w, r)
	}
	if pw < 256 {
		t.Errorf("plain TLS wrote %d times: the measure does not see records", pw)
	}
}

// tcpPair is a connected pair of loopback TCP connections.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestStalledByTheKernel: a write or read the kernel's own probing ended
// (TCP_USER_TIMEOUT, keepalive: ETIMEDOUT, "connection timed out") is a
// stall like one the progress deadline found, whichever fired first.
func TestStalledByTheKernel(t *testing.T) {
	for _, err := range []error{
		&net.OpError{Op: "write", Net: "tcp", Err: os.NewSyscallError("write", unix.ETIMEDOUT)},
		&net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded},
	} {
		if !stalled(err) {
			t.Errorf("stalled(%v) = false", err)
		}
	}
	for _, err := range []error{io.EOF, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", unix.ECONNRESET)}} {
		if stalled(err) {
			t.Errorf("stalled(%v) = true", err)
		}
	}
}

// TestStallConn: an armed disk connection waits for its first byte as
// long as it takes, then fails a read that gets nothing for the stall
// deadline, and a write the peer does not take, as errs.Unavailable
// ("stalled"); unarmed it never sets a deadline.
func TestStallConn(t *testing.T) {
	const d = 300 * time.Millisecond
	t.Run("read", func(t *testing.T) {
		a, b := tcpPair(t)
		sc := &stallConn{Conn: b}
		sc.arm(d)
		go func() { time.Sleep(3 * d); a.Write([]byte("x")) }()
		buf := make([]byte, 16)
		start := time.Now()
		if n, err := sc.Read(buf); n != 1 || err != nil {
			t.Fatalf("first read after %s: %d, %v; want the byte (no deadline before it)", time.Since(start), n, err)
		}
		start = time.Now()
		_, err := sc.Read(buf)
		took := time.Since(start)
		if errs.ClassOf(err) != errs.Unavailable || !strings.Contains(err.Error(), "stalled") {
			t.Fatalf("read of a silent peer: %v, want Unavailable (stalled)", err)
		}
		if took < d || took > 10*d {
			t.Errorf("the stall was found after %s, want about %s", took, d)
		}
	})
	t.Run("write", func(t *testing.T) {
		_, b := tcpPair(t) // the peer never reads
		sc := &stallConn{Conn: b}
		sc.arm(d)
		start := time.Now()
		chunk := make([]byte, 1<<20)
		var err error
		for i := 0; i < 256 && err == nil; i++ {
			_, err = sc.Write(chunk)
		}
		if errs.ClassOf(err) != errs.Unavailable || !strings.Contains(err.Error(), "stalled") {
			t.Fatalf("writes to a peer that reads nothing: %v after %s, want Unavailable (stalled)", err, time.Since(start))
		}
	})
	t.Run("unarmed", func(t *testing.T) {
		a, b := tcpPair(t)
		sc := &stallConn{Conn: b}
		go func() { time.Sleep(2 * d); a.Write([]byte("x")) }()
		buf := make([]byte, 16)
		sc.Read(buf)
		go func() { time.Sleep(2 * d); a.Write([]byte("y")) }()
		if n, err := sc.Read(buf); n != 1 || err != nil || buf[0] != 'y' {
			t.Fatalf("unarmed read after a pause: %d %q, %v", n, buf[:n], err)
		}
	})
}
