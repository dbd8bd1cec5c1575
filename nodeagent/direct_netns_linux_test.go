package nodeagent_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/nodeagent"
)

// inNetns runs fn on a thread in network namespace ns (sockets it opens
// live there); the thread is never unlocked, so it ends with fn and never
// returns to the host's namespace.
func inNetns(ns string, fn func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestDirectAcrossNamespaces: the control plane and the node as two
// network namespaces the test creates, joined by a veth pair (nothing of
// the host's network is touched; the fabric stays on loopback). The node
// listens where it reaches the control plane from (DirectAddress picks
// its veth address) and an agent stream crosses the veth directly.
func TestDirectAcrossNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8)")
	}
	n := os.Getpid() % 250
	cp, node := fmt.Sprintf("w3c%d", os.Getpid()), fmt.Sprintf("w3n%d", os.Getpid())
	cpIP, nodeIP := fmt.Sprintf("10.203.%d.1", n), fmt.Sprintf("10.203.%d.2", n)
	ipCmd(t, "netns", "add", cp)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", cp).Run() })
	ipCmd(t, "netns", "add", node)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", node).Run() })
	// Both ends made inside the namespaces: the host never sees them.
	ipCmd(t, "-n", cp, "link", "add", "vc", "type", "veth", "peer", "name", "vn", "netns", node)
	ipCmd(t, "-n", cp, "addr", "add", cpIP+"/30", "dev", "vc")
	ipCmd(t, "-n", node, "addr", "add", nodeIP+"/30", "dev", "vn")
	for _, ns := range []string{cp, node} {
		ipCmd(t, "-n", ns, "link", "set", "lo", "up")
	}
	ipCmd(t, "-n", cp, "link", "set", "vc", "up")
	ipCmd(t, "-n", node, "link", "set", "vn", "up")

	e := newDirectEnv(t)
	var d *nodeagent.Direct
	if err := inNetns(node, func() error {
		ip, err := nodeagent.DirectAddress([]string{"nats://" + cpIP + ":4222"})
		if err != nil {
			return err
		}
		if ip != nodeIP {
			return fmt.Errorf("the node reaches the control plane from %s, want %s", ip, nodeIP)
		}
		d, err = nodeagent.NewDirect(nodeagent.DirectConfig{ID: "node-a", Listen: net.JoinHostPort(ip, "0"), CA: e.caPEM})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	serveDirect(t, "node-a", e.node(t, "node-a"), stubEngine{ip: "127.203.0.1"}, d)
	r := e.directRemote(t, "node-a", nil)
	waitServed(t, r)
	if err := inNetns(cp, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := r.DialAgent(ctx, "vmrun01")
		if err != nil {
			return err
		}
		defer c.Close()
		if !strings.HasPrefix(c.RemoteAddr().String(), nodeIP+":") {
			return fmt.Errorf("agent stream to %s, want the node's veth address", c.RemoteAddr())
		}
		c.Write([]byte("across"))
		buf := make([]byte, 6)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "across" {
			return fmt.Errorf("echo across the veth = %q, %v", buf, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if dn, nn := r.StreamCounts(); dn != 1 || nn != 0 {
		t.Fatalf("%d direct, %d nats streams; want 1 direct", dn, nn)
	}
}
