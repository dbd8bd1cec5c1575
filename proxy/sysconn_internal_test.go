package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		got <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-got
	if s == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// TestSysConnAsNetConn checks that sysConn behaves as the net.Conn it
// replaces: data both ways, a write larger than the socket buffers
// (several waits for writability), io.EOF at the end, timeouts and closes
// reported as net.Conn reports them (the loop's commonReadError and the
// client watch rely on that).
func TestSysConnAsNetConn(t *testing.T) {
	a, b := tcpPair(t)
	s := sysConnFor(a).(*sysConn)

	if n, err := s.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d, %v", n, err)
	}
	if _, err := b.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, err := s.Read(buf)
	if err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read: %q, %v", buf[:n], err)
	}

	// 8 MiB to a peer that reads slowly: Write returns once all is sent.
	big := make([]byte, 8<<20)
	rand.Read(big)
	got := make(chan []byte)
	go func() {
		time.Sleep(100 * time.Millisecond)
		all, _ := io.ReadAll(io.LimitReader(b, int64(len(big))))
		got <- all
	}()
	if n, err := s.Write(big); n != len(big) || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if !bytes.Equal(<-got, big) {
		t.Fatal("peer read other bytes than written")
	}

	// A read deadline: a timeout, Op "read", as net.Conn's.
	_ = s.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = s.Read(buf)
	var ne net.Error
	var oe *net.OpError
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &oe) || oe.Op != "read" || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v (%T)", err, err)
	}
	if !commonReadError(err) {
		t.Fatalf("commonReadError(%v) = false", err)
	}
	_ = s.SetReadDeadline(time.Time{})

	// A write deadline on a full socket: a timeout, Op "write". A pair
	// of its own with small fixed buffers: loopback autotuning (tcp_rmem
	// up to 32 MiB here) can take all 8 MiB on a connection that already
	// carried that much, and the write never blocks.
	aw, bw := tcpPair(t)
	if err := bw.SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	if err := aw.SetWriteBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	sw := sysConnFor(aw)
	_ = sw.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	n, err = sw.Write(big)
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.As(err, &oe) || oe.Op != "write" || n >= len(big) {
		t.Fatalf("write past deadline: %d, %v", n, err)
	}
	_ = sw.SetWriteDeadline(time.Time{})

	// The peer closes: io.EOF once its bytes are read.
	a2, b2 := tcpPair(t)
	s2 := sysConnFor(a2)
	b2.Write([]byte("x"))
	b2.Close()
	if n, err := s2.Read(buf); n != 1 || err != nil {
		t.Fatalf("last byte: %d, %v", n, err)
	}
	if _, err := s2.Read(buf); err != io.EOF {
		t.Fatalf("after the peer closed: %v, want io.EOF", err)
	}

	// The peer reset: writes fail with Op "write".
	a3, b3 := tcpPair(t)
	s3 := sysConnFor(a3)
	b3.SetLinger(0)
	b3.Close()
	deadline := time.Now().Add(5 * time.Second)
	for err = nil; err == nil && time.Now().Before(deadline); {
		_, err = s3.Write([]byte("data"))
		time.Sleep(10 * time.Millisecond)
	}
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("write to a reset peer: %v", err)
	}

	// Our own close: net.ErrClosed, for a read waiting and for calls after.
	a4, _ := tcpPair(t)
	s4 := sysConnFor(a4)
	errc := make(chan error, 1)
	go func() {
		_, err := s4.Read(buf)
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	s4.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) || !errors.As(err, &oe) || oe.Op != "read" {
		t.Fatalf("read ended by close: %v", err)
	}
	if _, err := s4.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
}

// TestSysConnKeepsTracking checks that a tracked connection wrapped for
// raw I/O is still found by connContext (the connection limits) and
// still closes through the limiter.
func TestSysConnKeepsTracking(t *testing.T) {
	a, _ := tcpPair(t)
	lim := &connLimiter{max: 1, perIP: map[string]int{"127.0.0.1": 1}, open: 1, active: new(atomic.Int64)}
	tc := &trackedConn{Conn: a, lim: lim, ip: "127.0.0.1", over: overPerIP}
	c := sysConnFor(tc)
	if _, ok := c.(*sysConn); !ok {
		t.Fatalf("sysConnFor(trackedConn) = %T, want *sysConn", c)
	}
	ctx := connContext(context.Background(), &replayConn{Conn: c})
	if got := overConnLimit(ctx); got != overPerIP {
		t.Fatalf("overConnLimit through sysConn = %v, want overPerIP", got)
	}
	c.Close()
	if lim.open != 0 {
		t.Fatalf("open connections after close: %d", lim.open)
	}
	// Not TCP: left alone.
	p1, p2 := net.Pipe()
	defer p2.Close()
	if c := sysConnFor(p1); c != p1 {
		t.Fatalf("sysConnFor(pipe) = %T", c)
	}
}

// TestSysConnConcurrent checks net.Conn's contract that several
// goroutines may call Read and Write at once (run it with -race): every
// write arrives whole, and concurrent reads share the stream.
func TestSysConnConcurrent(t *testing.T) {
	a, b := tcpPair(t)
	s := sysConnFor(a)
	const writers, each = 4, 200
	msg := func(w int) []byte { return bytes.Repeat([]byte{byte('a' + w)}, 1000) }
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				if _, err := s.Write(msg(w)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	got, err := io.ReadAll(io.LimitReader(b, writers*each*1000))
	wg.Wait()
	if err != nil || len(got) != writers*each*1000 {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
	for i := 0; i < len(got); i += 1000 {
		if !bytes.Equal(got[i:i+1000], msg(int(got[i]-'a'))) {
			t.Fatalf("write at %d interleaved with another", i)
		}
	}

	// Concurrent readers: together they read all of it.
	go func() {
		b.Write(bytes.Repeat([]byte("x"), 1<<20))
		b.Close()
	}()
	var total atomic.Int64
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for {
				n, err := s.Read(buf)
				total.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	if total.Load() != 1<<20 {
		t.Fatalf("readers got %d bytes, want %d", total.Load(), 1<<20)
	}
}
