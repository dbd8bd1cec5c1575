package nodeagent_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/engine/enginetest"
)

// directEnv is a cluster plus a fabric CA and the control plane's
// client certificate from it.
type directEnv struct {
	*cluster
	caPEM []byte
	cert  tls.Certificate
}

func newDirectEnv(t testing.TB) *directEnv {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	_, caPEM, err := fabric.ServerTLS(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := fabric.ControlCertificate(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &directEnv{cluster: newCluster(t), caPEM: caPEM, cert: cert}
}

// direct is a direct listener for node id on loopback.
func (e *directEnv) direct(t testing.TB, id string) *nodeagent.Direct {
	t.Helper()
	d, err := nodeagent.NewDirect(nodeagent.DirectConfig{ID: id, Listen: "127.0.0.1:0", CA: e.caPEM})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// serveDirect runs ServeEngine for eng as node id with direct listener d.
func serveDirect(t testing.TB, id string, conn *fabric.Conn, eng engine.Engine, d *nodeagent.Direct) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- nodeagent.ServeEngine(ctx, nodeagent.ServeConfig{ID: id, Conn: conn, Engine: eng, Direct: d})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve engine: %v", err)
		}
	})
}

// directRemote is the control plane's Remote for node id with the
// client certificate.
func (e *directEnv) directRemote(t testing.TB, id string, fl *fakeLocal) *nodeagent.Remote {
	t.Helper()
	cfg := nodeagent.RemoteConfig{ID: id, Conn: e.control, DirectTLS: &tls.Config{Certificates: []tls.Certificate{e.cert}}}
	if fl != nil {
		cfg.Signer = fl.hostKey
	}
	r, err := nodeagent.NewRemote(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// TestConformanceDirect runs the engine's conformance suite with agent
// streams over direct TLS connections (and none over NATS).
func TestConformanceDirect(t *testing.T) {
	var mu sync.Mutex
	var remotes []*nodeagent.Remote
	enginetest.Run(t, func(t *testing.T) enginetest.Harness {
		fl := newFakeLocal(t)
		e := newDirectEnv(t)
		serveDirect(t, "node-a", e.node(t, "node-a"), fl.eng, e.direct(t, "node-a"))
		r := e.directRemote(t, "node-a", fl)
		waitServed(t, r)
		mu.Lock()
		remotes = append(remotes, r)
		mu.Unlock()
		return enginetest.Harness{
			Engine: r, Image: "minimal", Owner: fl.owner,
			Kill:    func(t *testing.T, inst engine.Instance) { fl.drv.Crash(inst.ID) },
			Timeout: 2 * time.Minute,
		}
	})
	var direct, nats int64
	for _, r := range remotes {
		d, n := r.StreamCounts()
		direct, nats = direct+d, nats+n
	}
	if direct == 0 || nats != 0 {
		t.Fatalf("agent streams: %d direct, %d over nats; want all direct", direct, nats)
	}
}

// TestDirectFallback: a node without a direct listener, and one whose
// listener is gone, are reached over NATS.
func TestDirectFallback(t *testing.T) {
	fl := newFakeLocal(t)
	e := newDirectEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ping := func(r *nodeagent.Remote, id string) {
		t.Helper()
		cl, err := r.Agent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if _, err := cl.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	serve(t, "node-a", e.node(t, "node-a"), fl.eng) // no listener
	r := e.directRemote(t, "node-a", fl)
	waitServed(t, r)
	inst, err := r.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "fb", Image: "minimal", CPUs: 1, MemoryMiB: 256, Owner: fl.owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Destroy(context.Background(), inst.ID)
	ping(r, inst.ID)
	if d, n := r.StreamCounts(); d != 0 || n != 1 {
		t.Fatalf("no listener: %d direct, %d nats streams", d, n)
	}

	// node-b has a listener, then loses it.
	fb := newFakeLocal(t)
	d := e.direct(t, "node-b")
	serveDirect(t, "node-b", e.node(t, "node-b"), fb.eng, d)
	rb := e.directRemote(t, "node-b", fb)
	waitServed(t, rb)
	ib, err := rb.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "fb2", Image: "minimal", CPUs: 1, MemoryMiB: 256, Owner: fb.owner}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Destroy(context.Background(), ib.ID)
	ping(rb, ib.ID)
	d.Close()
	ping(rb, ib.ID)
	if d, n := rb.StreamCounts(); d != 1 || n != 1 {
		t.Fatalf("listener lost: %d direct, %d nats streams; want 1 and 1", d, n)
	}
}

// stubEngine is an engine with two VMs: vmrun01 runs at ip, vmstop01 is
// stopped. DialAgent echoes; console logs live under dir.
type stubEngine struct {
	engine.Engine
	ip  string
	dir string
}

func (s stubEngine) OnExit(engine.ExitFunc)                            {}
func (s stubEngine) Capacity(context.Context) (engine.Capacity, error) { return engine.Capacity{}, nil }

func (s stubEngine) Get(_ context.Context, id string) (engine.Instance, error) {
	switch id {
	case "vmrun01":
		return engine.Instance{ID: id, State: vm.Running, IP: s.ip + "/24"}, nil
	case "vmstop01":
		return engine.Instance{ID: id, State: vm.Stopped, IP: s.ip}, nil
	}
	return engine.Instance{}, errs.New(errs.NotFound, "no vm %s", id)
}

func (s stubEngine) DialAgent(ctx context.Context, id string) (net.Conn, error) {
	inst, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if inst.State != vm.Running {
		return nil, errs.New(errs.FailedPrecondition, "vm %s is not running", id)
	}
	a, b := net.Pipe()
	go func() { io.Copy(b, b); b.Close() }()
	return a, nil
}

func (s stubEngine) ConsoleLog(ctx context.Context, id string) (string, error) {
	if _, err := s.Get(ctx, id); err != nil {
		return "", err
	}
	return filepath.Join(s.dir, id, "console.log"), nil
}

// helloOver dials addr with certs, sends a hello and returns the
// connection and the reply line (err: the TLS handshake failed).
func helloOver(addr string, certs []tls.Certificate, ticket, kind, id string) (net.Conn, string, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{InsecureSkipVerify: true, Certificates: certs})
	if err != nil {
		return nil, "", err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := json.Marshal(map[string]string{"ticket": ticket, "kind": kind, "vm": id})
	if _, err := c.Write(append(b, '\n')); err != nil {
		c.Close()
		return nil, "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return nil, "", err
	}
	return c, line, nil
}

// TestDirectTickets: a ticket is single use, expires, is bound to its VM
// and kind; clients without the fabric CA's certificate are refused
// before a ticket is spent.
func TestDirectTickets(t *testing.T) {
	e := newDirectEnv(t)
	d := e.direct(t, "node-a")
	serveDirect(t, "node-a", e.node(t, "node-a"), stubEngine{ip: "127.203.0.1"}, d)
	certs := []tls.Certificate{e.cert}
	issue := func(kind, id string) (string, string) {
		t.Helper()
		addr, tk, _, err := d.Issue(kind, id)
		if err != nil {
			t.Fatal(err)
		}
		return addr, tk
	}
	refused := func(line, want string) {
		t.Helper()
		if !strings.Contains(line, `"code":"permission_denied"`) || !strings.Contains(line, want) {
			t.Fatalf("reply %q, want a refusal saying %q", line, want)
		}
	}

	// Strangers first: no certificate, or one from another CA.
	addr, tk := issue(nodeagent.KindAgent, "vmrun01")
	if _, _, err := helloOver(addr, nil, tk, nodeagent.KindAgent, "vmrun01"); err == nil {
		t.Fatal("a client without a certificate got a hello reply")
	}
	other, err := fabric.ControlCertificate(filepath.Join(t.TempDir(), "other-ca"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := helloOver(addr, []tls.Certificate{other}, tk, nodeagent.KindAgent, "vmrun01"); err == nil {
		t.Fatal("a client with another CA's certificate got a hello reply")
	}
	// The ticket is unspent: the control plane uses it and is spliced
	// to the agent (an echo here).
	c, line, err := helloOver(addr, certs, tk, nodeagent.KindAgent, "vmrun01")
	if err != nil || !strings.Contains(line, `"ok":true`) {
		t.Fatalf("valid ticket: %q, %v", line, err)
	}
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("spliced echo = %q, %v", buf, err)
	}
	c.Close()
	// Single use.
	_, line, err = helloOver(addr, certs, tk, nodeagent.KindAgent, "vmrun01")
	if err != nil {
		t.Fatal(err)
	}
	refused(line, "already used")
	// Bound to its VM (and then spent).
	_, tk = issue(nodeagent.KindAgent, "vmrun01")
	_, line, _ = helloOver(addr, certs, tk, nodeagent.KindAgent, "vmstop01")
	refused(line, "another vm")
	_, line, _ = helloOver(addr, certs, tk, nodeagent.KindAgent, "vmrun01")
	refused(line, "already used")
	// Bound to its kind.
	_, tk = issue(nodeagent.KindAgent, "vmrun01")
	_, line, _ = helloOver(addr, certs, tk, nodeagent.KindTunnel, "")
	refused(line, "another use")
	// Expires.
	_, tk = issue(nodeagent.KindAgent, "vmrun01")
	d.SetClock(func() time.Time { return time.Now().Add(11 * time.Second) })
	_, line, _ = helloOver(addr, certs, tk, nodeagent.KindAgent, "vmrun01")
	d.SetClock(time.Now)
	refused(line, "expired")
	// A valid ticket for a VM that does not run: the engine's error.
	_, tk = issue(nodeagent.KindAgent, "vmstop01")
	_, line, _ = helloOver(addr, certs, tk, nodeagent.KindAgent, "vmstop01")
	if !strings.Contains(line, "failed_precondition") {
		t.Fatalf("stopped vm: %q", line)
	}
}

// loopbackEcho listens on ip:0 and echoes; it returns the port.
func loopbackEcho(t *testing.T, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestTunnel: DialPort reaches a port of the node's running VM through
// the tunnel, and the node refuses non-VM addresses, stopped and unknown
// VMs; a node without a listener has no tunnel (ErrUnsupported).
func TestTunnel(t *testing.T) {
	ip := "127.203." + strconv.Itoa(os.Getpid()%250) + ".1" // a loopback address of this task's range
	port := loopbackEcho(t, ip)
	e := newDirectEnv(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), stubEngine{ip: ip}, e.direct(t, "node-a"))
	r := e.directRemote(t, "node-a", nil)
	waitServed(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < 3; i++ { // one tunnel, several channels
		c, err := r.DialPort(ctx, "vmrun01", port)
		if err != nil {
			t.Fatal(err)
		}
		msg := []byte("hello " + strconv.Itoa(i))
		c.Write(msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("echo through the tunnel = %q, %v", got, err)
		}
		c.Close()
	}
	for _, tc := range []struct {
		host string
		port int
		want error
	}{
		{"vmstop01", port, errs.FailedPrecondition},
		{"127.0.0.1", port, errs.NotFound},
		{ip, port, errs.NotFound},
		{"vmother1", port, errs.NotFound},
		{"vmrun01", 0, errs.InvalidArgument},
	} {
		if c, err := r.DialPort(ctx, tc.host, tc.port); !errors.Is(err, tc.want) {
			if c != nil {
				c.Close()
			}
			t.Errorf("DialPort(%s, %d) = %v, want %v", tc.host, tc.port, err, tc.want)
		}
	}
	// Nothing listens on that port of the VM.
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	closedPort := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	if _, err := r.DialPort(ctx, "vmrun01", closedPort); !errors.Is(err, errs.Unavailable) {
		t.Errorf("DialPort to a closed port = %v, want Unavailable", err)
	}

	serve(t, "node-b", e.node(t, "node-b"), stubEngine{ip: ip})
	rb := e.directRemote(t, "node-b", nil)
	waitServed(t, rb)
	if _, err := rb.DialPort(ctx, "vmrun01", port); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("DialPort without a listener = %v, want ErrUnsupported", err)
	}
}

// syncBuf is a bytes.Buffer safe for a writer and a reader.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestConsoleOverFabric: a VM's console log on another host is copied,
// then followed as the guest prints, until the caller stops or the VM is
// destroyed.
func TestConsoleOverFabric(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "vmrun01"), 0o700)
	path := filepath.Join(dir, "vmrun01", "console.log")
	os.WriteFile(path+".1", []byte("older\n"), 0o600)
	os.WriteFile(path, []byte("boot\n"), 0o600)
	c := newCluster(t)
	serve(t, "node-a", c.node(t, "node-a"), stubEngine{ip: "127.203.0.1", dir: dir})
	r := c.remote(t, "node-a", nil)
	waitServed(t, r)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var b bytes.Buffer
	if err := r.CopyConsole(ctx, "vmrun01", false, &b); err != nil || b.String() != "older\nboot\n" {
		t.Fatalf("console copy = %q, %v", b.String(), err)
	}
	if err := r.CopyConsole(ctx, "nosuchvm", false, &b); !errors.Is(err, errs.NotFound) {
		t.Fatalf("console of an unknown vm = %v", err)
	}
	// Follow: what the guest prints arrives; cancelling ends it.
	wait := func(sb *syncBuf, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(sb.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("followed log %q never showed %q", sb.String(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	var sb syncBuf
	fctx, fcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.CopyConsole(fctx, "vmrun01", true, &sb) }()
	wait(&sb, "boot\n")
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("login: ")
	f.Close()
	wait(&sb, "boot\nlogin: ")
	fcancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follow after cancel = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not stop when its caller did")
	}
	// A destroyed VM's follow ends by itself.
	var sb2 syncBuf
	go func() { done <- r.CopyConsole(ctx, "vmrun01", true, &sb2) }()
	wait(&sb2, "login: ")
	os.RemoveAll(filepath.Join(dir, "vmrun01"))
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("follow of a destroyed vm = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow of a destroyed vm never ended")
	}
}

// TestTunnelBench compares HTTP requests per second to a VM's port
// reached directly (the proxy on the VM's own host) and through the
// node's port tunnel (the proxy on the control plane), with pooled
// connections and with a new connection per request. Set
// NODEAGENT_BENCH=1.
func TestTunnelBench(t *testing.T) {
	if os.Getenv("NODEAGENT_BENCH") == "" {
		t.Skip("set NODEAGENT_BENCH=1 to measure")
	}
	ip := "127.203." + strconv.Itoa(os.Getpid()%250) + ".2"
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	body := bytes.Repeat([]byte("x"), 1024)
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) })}
	go hs.Serve(ln)
	defer hs.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	e := newDirectEnv(t)
	serveDirect(t, "node-a", e.node(t, "node-a"), stubEngine{ip: ip}, e.direct(t, "node-a"))
	r := e.directRemote(t, "node-a", nil)
	waitServed(t, r)
	rate := func(dial func(ctx context.Context) (net.Conn, error), keepAlive bool) float64 {
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
			MaxIdleConnsPerHost: 16, DisableKeepAlives: !keepAlive}
		defer tr.CloseIdleConnections()
		cl := &http.Client{Transport: tr}
		var n atomic.Int64
		end := time.Now().Add(3 * time.Second)
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(end) {
					res, err := cl.Get("http://vm/")
					if err != nil {
						t.Error(err)
						return
					}
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					n.Add(1)
				}
			}()
		}
		wg.Wait()
		return float64(n.Load()) / 3
	}
	direct := func(ctx context.Context) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	}
	tunnel := func(ctx context.Context) (net.Conn, error) { return r.DialPort(ctx, "vmrun01", port) }
	for _, ka := range []bool{true, false} {
		d, tu := rate(direct, ka), rate(tunnel, ka)
		t.Logf("keep-alive %-5v: VM port directly %6.0f req/s, through the tunnel %6.0f req/s, ratio %.2f", ka, d, tu, tu/d)
	}
}
