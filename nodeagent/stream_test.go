package nodeagent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
)

// streamPair is a stream between the control plane and node n1 over a
// real embedded fabric (the node on its own credential, over TCP).
func streamPair(t testing.TB) (control, node *stream) {
	t.Helper()
	seed, pub, _ := fabric.NewNodeKey()
	srv, err := fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		NodeKey: func(p string) (string, bool) { return "n1", p == pub }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	cc, err := srv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Close)
	nc, err := fabric.ConnectNode(srv.ClientURL(), "n1", seed)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	sid := newToken()
	control, err = newStream(cc, streamOut("n1", sid), streamIn("n1", sid), "control", "n1")
	if err != nil {
		t.Fatal(err)
	}
	node, err = newStream(nc, streamIn("n1", sid), streamOut("n1", sid), "n1", "control")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cc.Flush(ctx)
	nc.Flush(ctx)
	t.Cleanup(func() { control.Close(); node.Close() })
	return control, node
}

// TestStreamEchoInOrder: 8 MiB of random bytes in odd-sized writes come
// back through a node-side echo byte for byte (ordering, and the window:
// 8 times it), and a close reaches the other end as EOF.
func TestStreamEchoInOrder(t *testing.T) {
	control, node := streamPair(t)
	go func() { io.Copy(node, node); node.Close() }()
	want := make([]byte, 8<<20)
	rand.Read(want)
	go func() {
		for b := want; len(b) > 0; {
			n := min(len(b), 1+len(b)%99991)
			if _, err := control.Write(b[:n]); err != nil {
				t.Error(err)
				return
			}
			b = b[n:]
		}
	}()
	got := make([]byte, len(want))
	control.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.ReadFull(control, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("echoed bytes differ")
	}
	// A read deadline in the past interrupts a blocked read.
	control.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := control.Read(got); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past its deadline = %v", err)
	}
	control.SetReadDeadline(time.Now().Add(10 * time.Second))
	control.Close()
	if _, err := control.Read(got); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close = %v", err)
	}
	// The node's echo saw EOF and closed.
	deadline := time.Now().Add(10 * time.Second)
	for !node.done() {
		if time.Now().After(deadline) {
			t.Fatal("node end never saw the close")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// measure reports the median round trip of a 1-byte echo and the median
// MiB/s of 32 MiB written to a sink that acknowledges with one byte.
func measure(t *testing.T, dial func() (net.Conn, net.Conn)) (rtt time.Duration, mibps float64) {
	echoC, echoS := dial()
	go func() { io.Copy(echoS, echoS) }()
	b := []byte{1}
	var rtts []time.Duration
	for i := 0; i < 500; i++ {
		t0 := time.Now()
		echoC.Write(b)
		if _, err := io.ReadFull(echoC, b); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(t0))
	}
	echoC.Close()
	echoS.Close()
	var rates []float64
	buf := make([]byte, 256<<10)
	const total = 32 << 20
	for i := 0; i < 5; i++ {
		c, s := dial()
		go func() {
			io.CopyN(io.Discard, s, total)
			s.Write([]byte{1})
		}()
		t0 := time.Now()
		for n := 0; n < total; n += len(buf) {
			if _, err := c.Write(buf); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		rates = append(rates, total/(1<<20)/time.Since(t0).Seconds())
		c.Close()
		s.Close()
	}
	slices.Sort(rates)
	return median(rtts), rates[len(rates)/2]
}

// TestStreamBench compares an agent stream over the fabric (control <->
// embedded NATS over TCP <-> node) with the unix socket a local DialAgent
// returns. Set NODEAGENT_BENCH=1 to run it.
func TestStreamBench(t *testing.T) {
	if os.Getenv("NODEAGENT_BENCH") == "" {
		t.Skip("set NODEAGENT_BENCH=1 to measure")
	}
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	unix := func() (net.Conn, net.Conn) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	tln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tln.Close()
	tcp := func() (net.Conn, net.Conn) {
		c, err := net.Dial("tcp", tln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := tln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	// A direct stream: TLS 1.3 with the fabric's certificates, as
	// dialDirect and the node's listener use them.
	caDir := filepath.Join(t.TempDir(), "tls")
	ccert, err := fabric.ControlCertificate(caDir)
	if err != nil {
		t.Fatal(err)
	}
	ncert, _, err := fabric.NodeCertificate("n1")
	if err != nil {
		t.Fatal(err)
	}
	overTLS := func() (net.Conn, net.Conn) {
		c, s := tcp()
		tc := tls.Client(c, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, Certificates: []tls.Certificate{ccert}})
		ts := tls.Server(s, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{ncert}, ClientAuth: tls.RequireAnyClientCert})
		go ts.Handshake()
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		return tc, ts
	}
	overNATS := func() (net.Conn, net.Conn) { c, s := streamPair(t); return c, s }
	lr, lt := measure(t, unix)
	tr, tt := measure(t, tcp)
	sr, st := measure(t, overTLS)
	nr, nt := measure(t, overNATS)
	t.Logf("unix socket (local DialAgent):        rtt median %v, throughput median %.0f MiB/s", lr, lt)
	t.Logf("loopback TCP (a brokered direct conn): rtt median %v, throughput median %.0f MiB/s", tr, tt)
	t.Logf("loopback TLS 1.3 (direct stream):      rtt median %v, throughput median %.0f MiB/s", sr, st)
	t.Logf("over NATS (Remote.DialAgent):         rtt median %v, throughput median %.0f MiB/s", nr, nt)
}
