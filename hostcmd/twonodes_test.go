package hostcmd

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/service"
)

// The roles of TestTwoNodesJoinNetns's processes, each in its own network
// namespace.
const (
	envTwoRole = "MINIONS_HOSTCMD_TWO_ROLE" // "cp" or "node"
	envTwoArgs = "MINIONS_HOSTCMD_TWO_ARGS" // the node's command line, tab-separated
	twoCPAddr  = "10.202.0.1"               // the control plane, on its namespace's lo
)

// TestTwoNodesJoinNetns: a control plane and two new hosts, each in a
// network namespace of its own joined by veth links the test makes
// (cp 10.202.1.1 <-> node1 10.202.1.2, cp 10.202.2.1 <-> node2 10.202.2.2;
// the control plane listens on 10.202.0.1). Each host runs `minions node
// join ... --no-systemd`: they get distinct /24s of the cluster range,
// each namespace's bridge is on its own, and the control plane records
// for each the address it reaches the fabric from (the one the control
// plane can reach it at), not the other's and not loopback.
func TestTwoNodesJoinNetns(t *testing.T) {
	switch os.Getenv(envTwoRole) {
	case "cp":
		twoNodesControlPlane(t)
		return
	case "node":
		twoNodesNode(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, netlink, nftables)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip(8)")
	}
	b := make([]byte, 2)
	rand.Read(b)
	tag := fmt.Sprintf("%d%s", os.Getpid()%100000, hex.EncodeToString(b))
	cp, n1, n2 := "mjc"+tag, "mj1"+tag, "mj2"+tag
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	for _, ns := range []string{cp, n1, n2} {
		sh("netns", "add", ns)
		defer exec.Command("ip", "netns", "del", ns).Run()
		sh("-n", ns, "link", "set", "lo", "up")
	}
	sh("-n", cp, "addr", "add", twoCPAddr+"/32", "dev", "lo")
	for i, ns := range []string{n1, n2} {
		veth := fmt.Sprintf("v%d", i+1)
		sh("-n", cp, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		sh("-n", cp, "addr", "add", fmt.Sprintf("10.202.%d.1/24", i+1), "dev", veth)
		sh("-n", cp, "link", "set", veth, "up")
		sh("-n", ns, "addr", "add", fmt.Sprintf("10.202.%d.2/24", i+1), "dev", "eth0")
		sh("-n", ns, "link", "set", "eth0", "up")
		sh("-n", ns, "route", "add", twoCPAddr+"/32", "via", fmt.Sprintf("10.202.%d.1", i+1))
	}
	dir, err := os.MkdirTemp("/tmp", "w2tn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	child := func(ns, role string, env ...string) *exec.Cmd {
		cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.count=1", "-test.timeout=230s", "-test.v")
		cmd.Env = append(append(os.Environ(), envTwoRole+"="+role, envJoinNetns+"="+t.Name()), env...)
		return cmd
	}

	// The control plane: prints the join commands, then the hosts once
	// both are ready with an address; stops when its stdin closes.
	cpCmd := child(cp, "cp", "MINIONS_HOSTCMD_TWO_DIR="+filepath.Join(dir, "cp"))
	cpIn, _ := cpCmd.StdinPipe()
	cpOut, _ := cpCmd.StdoutPipe()
	var cpErr syncBuffer
	cpCmd.Stderr = &cpErr
	if err := cpCmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cpIn.Close(); cpCmd.Wait() }()
	lines := bufio.NewScanner(cpOut)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	next := func(prefix string) string {
		t.Helper()
		for lines.Scan() {
			if l := lines.Text(); strings.HasPrefix(l, prefix) {
				return strings.TrimPrefix(l, prefix)
			}
		}
		t.Fatalf("the control plane said no %q: %s", prefix, cpErr.String())
		return ""
	}
	var cmds []string
	if err := json.Unmarshal([]byte(next("JOIN ")), &cmds); err != nil || len(cmds) != 2 {
		t.Fatalf("join commands %v %v", cmds, err)
	}

	// The two new hosts.
	var nodes []*exec.Cmd
	var nodeErrs []*syncBuffer
	for i, ns := range []string{n1, n2} {
		f := strings.Fields(cmds[i]) // minions node join URL --token T
		nd := filepath.Join(dir, fmt.Sprintf("n%d", i+1))
		args := []string{"node", "join", f[3], "--token", f[5], "--no-systemd", "--state-dir", nd, "--run-dir", filepath.Join(nd, "run")}
		cmd := child(ns, "node", envTwoArgs+"="+strings.Join(args, "\t"))
		out := &syncBuffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		nodes, nodeErrs = append(nodes, cmd), append(nodeErrs, out)
	}
	defer func() {
		for _, c := range nodes {
			c.Process.Signal(syscall.SIGTERM)
		}
		for i, c := range nodes {
			if err := c.Wait(); err != nil {
				t.Errorf("node%d: %v\n%s", i+1, err, nodeErrs[i].String())
			}
		}
	}()

	var hosts []service.Host
	if err := json.Unmarshal([]byte(next("HOSTS ")), &hosts); err != nil {
		t.Fatalf("hosts: %v (node1: %s node2: %s)", err, nodeErrs[0].String(), nodeErrs[1].String())
	}
	got := map[string]service.Host{}
	for _, h := range hosts {
		got[h.Name] = h
	}
	// Distinct /24s of the cluster range (in the order they joined), and
	// each host's own address on its link to the control plane.
	if s1, s2 := got["node1"].Subnet, got["node2"].Subnet; s1 == s2 || !(s1 == "10.88.0.0/24" || s1 == "10.88.1.0/24") || !(s2 == "10.88.0.0/24" || s2 == "10.88.1.0/24") {
		t.Errorf("subnets: node1 %q node2 %q, want 10.88.0.0/24 and 10.88.1.0/24", s1, s2)
	}
	for name, addr := range map[string]string{"node1": "10.202.1.2", "node2": "10.202.2.2"} {
		if h := got[name]; h.State != "ready" || h.Address != addr {
			t.Errorf("%s on the control plane: state %s address %s, want ready at %s", name, h.State, h.Address, addr)
		}
	}
	// Each namespace's bridge is on its host's own subnet.
	for ns, name := range map[string]string{n1: "node1", n2: "node2"} {
		gw := strings.TrimSuffix(got[name].Subnet, "0/24") + "1/24"
		out, err := exec.Command("ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "minions0").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "inet "+gw+" ") {
			t.Errorf("bridge of %s: %s %v, want %s", name, out, err, gw)
		}
	}
}

// twoNodesControlPlane is the control plane's process.
func twoNodesControlPlane(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	svc, root, invs := testControlPlaneOn(t, ctx, os.Getenv("MINIONS_HOSTCMD_TWO_DIR"), twoCPAddr, "node1", "node2")
	cmds := []string{invs[0].Command, invs[1].Command}
	b, _ := json.Marshal(cmds)
	fmt.Printf("JOIN %s\n", b)
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		hs, err := svc.HostList(ctx, root)
		if err != nil {
			t.Fatal(err)
		}
		ready := 0
		for _, h := range hs {
			if !h.Local && h.State == "ready" && h.Address != "" {
				ready++
			}
		}
		if ready == 2 || time.Now().After(deadline) {
			b, _ := json.Marshal(hs)
			fmt.Printf("HOSTS %s\n", b)
			break
		}
	}
	io.Copy(io.Discard, os.Stdin)
}

// twoNodesNode is a new host's process: `minions node join ...` until
// SIGTERM.
func twoNodesNode(t *testing.T) {
	if err := mirrorHostCgroups(); err != nil {
		t.Fatal(err)
	}
	args := strings.Split(os.Getenv(envTwoArgs), "\t")
	var out, errOut syncBuffer
	env := &cli.Env{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }, Extra: Commands()}
	if code := cli.Run(context.Background(), env, args); code != 0 {
		t.Fatalf("node join exited %d: %s\n%s", code, out.String(), errOut.String())
	}
}
