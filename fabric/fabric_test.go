package fabric_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
)

// TestMain doubles as a separate nats-server process for
// TestExternalURL: with FABRIC_TEST_NATS=1 it runs a plain server on a
// free loopback port, prints its URL and serves until stdin closes.
func TestMain(m *testing.M) {
	if os.Getenv("FABRIC_TEST_NATS") == "1" {
		// The operator's configuration: the control plane's and the
		// node's keys, the node confined as fabric.NodePermissions says.
		users := fabric.NkeyUsers(os.Getenv("FABRIC_TEST_CONTROL"), map[string]string{"node-x": os.Getenv("FABRIC_TEST_NODE")})
		ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true, Nkeys: users})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		go ns.Start()
		if !ns.ReadyForConnections(10 * time.Second) {
			os.Exit(1)
		}
		fmt.Println(ns.ClientURL())
		bufio.NewReader(os.Stdin).ReadString('\n')
		ns.Shutdown()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type node struct{ id, seed, pub string }

func newNode(t *testing.T, id string) node {
	t.Helper()
	seed, pub, err := fabric.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	return node{id, seed, pub}
}

func startServer(t *testing.T, nodes ...node) *fabric.Server {
	t.Helper()
	keys := map[string]string{}
	for _, n := range nodes {
		keys[n.pub] = n.id
	}
	srv, err := fabric.Start(fabric.Config{Listen: "127.0.0.1:0", StoreDir: t.TempDir(),
		NodeKey: func(pub string) (string, bool) { id, ok := keys[pub]; return id, ok }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return srv
}

// waitErr waits for an asynchronous error containing want.
func waitErr(t *testing.T, c *fabric.Conn, want string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case err := <-c.Errors():
			if strings.Contains(strings.ToLower(err.Error()), want) {
				return
			}
		case <-deadline:
			t.Fatalf("no asynchronous error containing %q", want)
		}
	}
}

// TestNodeCredentialConfined proves a node's credential reaches only its
// own subjects: it cannot subscribe to another node's requests, publish
// another node's status or anything on the admin subjects, while its own
// requests and status work. Real embedded server, real TCP connections.
func TestNodeCredentialConfined(t *testing.T) {
	a, b := newNode(t, "node-a"), newNode(t, "node-b")
	srv := startServer(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	control, err := srv.Control("control")
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	ca, err := fabric.ConnectNode(srv.ClientURL(), a.id, a.seed)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := fabric.ConnectNode(srv.ClientURL(), b.id, b.seed)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()

	// What the control plane sees on the subjects a node must not use.
	seen := make(chan string, 16)
	for _, subj := range []string{fabric.AdminSubjects, fabric.StatusSubjects} {
		if _, err := control.Subscribe(subj, func(m fabric.Msg) { seen <- m.Subject + " " + string(m.Data) }); err != nil {
			t.Fatal(err)
		}
	}
	if err := control.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	// Node a spies on node b's requests: refused.
	leaked := make(chan string, 4)
	if _, err := ca.Subscribe(fabric.NodeSubject(b.id)+".>", func(m fabric.Msg) { leaked <- m.Subject }); err != nil {
		t.Fatal(err)
	}
	waitErr(t, ca, "permissions violation")
	// Node b serves its own subject; a request to it reaches b only.
	if _, err := cb.Subscribe(fabric.NodeSubject(b.id)+".ping", func(m fabric.Msg) { m.Respond([]byte("pong " + b.id)) }); err != nil {
		t.Fatal(err)
	}
	cb.Flush(ctx)
	reply, err := control.Request(ctx, fabric.NodeSubject(b.id)+".ping", []byte("hi"))
	if err != nil || string(reply) != "pong node-b" {
		t.Fatalf("request to node b: %q, %v", reply, err)
	}
	select {
	case s := <-leaked:
		t.Fatalf("node a received node b's request on %s", s)
	case <-time.After(200 * time.Millisecond):
	}

	// Node a publishes on the admin subjects and as node b: refused, and
	// nothing reaches the control plane.
	ca.Publish("minions.admin.hosts.remove", []byte("forged"))
	waitErr(t, ca, "permissions violation")
	ca.Publish(fabric.StatusSubject(b.id), []byte("forged"))
	waitErr(t, ca, "permissions violation")
	// Its own status goes through (and orders after the forgeries).
	ca.Publish(fabric.StatusSubject(a.id), []byte("ok"))
	ca.Flush(ctx)
	select {
	case got := <-seen:
		if got != "minions.status.node-a ok" {
			t.Fatalf("control plane received %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("node a's own status did not arrive")
	}
	select {
	case got := <-seen:
		t.Fatalf("control plane also received %q", got)
	case <-time.After(200 * time.Millisecond):
	}

	// Node a cannot read the JetStream API or everything.
	ca.Subscribe(">", func(fabric.Msg) {})
	waitErr(t, ca, "permissions violation")
}

// TestUnknownKeyRefused: a key the control plane does not know, or a
// known node ID with the wrong key, cannot connect at all.
func TestUnknownKeyRefused(t *testing.T) {
	a := newNode(t, "node-a")
	srv := startServer(t, a)
	stranger := newNode(t, "node-a") // same ID, other key
	_, err := fabric.ConnectNode(srv.ClientURL(), stranger.id, stranger.seed, fabric.NoReconnect())
	if errs.ClassOf(err) != errs.Unauthenticated {
		t.Fatalf("stranger's key: %v (class %v), want Unauthenticated", err, errs.ClassOf(err))
	}
	if _, err := fabric.ConnectNode(srv.ClientURL(), "Bad.ID", a.seed); errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("bad id: %v", err)
	}
}

// TestExternalURL runs the control plane and a node against a separate
// nats-server process (this test binary in server mode): heartbeats and
// requests flow through it.
func TestExternalURL(t *testing.T) {
	n := newNode(t, "node-x")
	cseed, cpub, _ := fabric.NewNodeKey()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FABRIC_TEST_NATS=1", "FABRIC_TEST_CONTROL="+cpub, "FABRIC_TEST_NODE="+n.pub)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	url := strings.TrimSpace(line)
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("server url %q", url)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	key, err := fabric.WithSeed(cseed)
	if err != nil {
		t.Fatal(err)
	}
	control, err := fabric.ConnectControl(url, key)
	if err != nil {
		t.Fatal(err)
	}
	defer control.Close()
	nc, err := fabric.ConnectNode(url, n.id, n.seed)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got := make(chan string, 1)
	control.Subscribe(fabric.StatusSubjects, func(m fabric.Msg) { got <- fabric.NodeOfStatus(m.Subject) + ":" + string(m.Data) })
	nc.Subscribe(fabric.NodeSubject(n.id)+".ping", func(m fabric.Msg) { m.Respond([]byte("pong")) })
	control.Flush(ctx)
	nc.Flush(ctx)
	nc.Publish(fabric.StatusSubject(n.id), []byte("beat"))
	select {
	case s := <-got:
		if s != "node-x:beat" {
			t.Fatalf("got %q", s)
		}
	case <-ctx.Done():
		t.Fatal("heartbeat did not arrive through the external server")
	}
	if r, err := control.Request(ctx, fabric.NodeSubject(n.id)+".ping", nil); err != nil || string(r) != "pong" {
		t.Fatalf("request: %q %v", r, err)
	}
	if _, err := control.Request(ctx, fabric.NodeSubject("nobody")+".ping", nil); errs.ClassOf(err) != errs.Unavailable && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("request to nobody: %v", err)
	}
	// The external server confines the node the same way.
	nc.Publish("minions.admin.x", nil)
	waitErr(t, nc, "permissions violation")
}
