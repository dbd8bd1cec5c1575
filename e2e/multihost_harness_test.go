package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/vm/engine"
)

// The several-hosts harness (issue 14, "How it is proven"): a control plane
// and two node hosts, each in a network namespace of its own with its own
// state and run dirs, joined by veth links to a bridge that lives in a
// fifth namespace. The test process itself (already in the e2e namespace
// TestMain made, never the host's) gets a veth into the same bridge and
// plays the users' machine: it reaches the control plane at 10.231.0.1
// as a user on another computer would.
//
//	mnmh-br-PID:  bridge mhbr, ports vb1 vb2 vb3 vbc
//	mnmh-cp-PID:  mh0 10.231.0.1/24   minions serve (fabric, API, SSH, proxy)
//	mnmh-n1-PID:  mh0 10.231.0.2/24   minions node join ... (then minions node)
//	mnmh-n2-PID:  mh0 10.231.0.3/24
//	e2e netns:    mhc0 10.231.0.100/24 (the test: CLI clients, ssh, scp, http, nats.go)
//
// Every process of a host starts with `nsenter --net=/run/netns/NS`: the
// test's own mount namespace (with the cgroup mounts TestMain mirrored)
// and the host's network. Namespaces, processes and VMs are removed when
// the test ends, failed or not.

const mhPrefix = "mnmh-" // namespace names: mnmh-<role>-<pid>

// mhHost is one host of the cluster.
type mhHost struct {
	name          string // cp, n1, n2 (the cp's own host row is named after the hostname)
	ns            string // network namespace
	addr          string // on the hosts' link
	dir           string // root of its state; everything of the host mentions it
	state, runDir string
	agent         *mhProc  // serve on the cp, the node agent on a node
	extraEnv      []string // more environment for its processes (test hooks)
}

// mhProc is a long-running minions process of a host.
type mhProc struct {
	cmd  *exec.Cmd
	log  *logBuffer
	done chan struct{}
}

func (p *mhProc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends sig and waits for the process to exit.
func (p *mhProc) kill(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if !p.running() {
		return
	}
	p.cmd.Process.Signal(sig)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%v did not stop on %v:\n%s", p.cmd.Args, sig, lastLines(p.log.String(), 30))
	}
}

// mhCluster is the whole harness.
type mhCluster struct {
	t          testing.TB
	pid        int
	root       string // under the e2e dir (so TestMain's cleanup finds strays)
	brNS       string
	clientNS   string // the e2e namespace the test runs in
	cp, n1, n2 *mhHost
	hosts      []*mhHost
	// cpHostName is the control plane's own host row's name (its
	// hostname), once a test looked it up; see rowName.
	cpHostName string

	// The control plane's listeners, fixed for the life of the test so a
	// restarted control plane is where the nodes left it.
	apiPort, sshPort, httpPort, natsPort, adminPort int
	config                                          string // serve's config file
	known                                           string // known_hosts pinning the cp's SSH host key

	keysDir string
}

func (c *mhCluster) api() string {
	return "http://" + net.JoinHostPort(c.cp.addr, strconv.Itoa(c.apiPort))
}
func (c *mhCluster) httpAddr() string {
	return net.JoinHostPort(c.cp.addr, strconv.Itoa(c.httpPort))
}

// ipCmd runs ip(8) with args and fails the test on error.
func ipCmd(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// removeStaleMultiHostNetns deletes the namespaces of earlier harness runs
// whose test process is gone.
func removeStaleMultiHostNetns() {
	names, _ := filepath.Glob("/run/netns/" + mhPrefix + "*")
	for _, p := range names {
		ns := filepath.Base(p)
		i := strings.LastIndexByte(ns, '-')
		pid, err := strconv.Atoi(ns[i+1:])
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue
		}
		exec.Command("ip", "netns", "del", ns).Run()
	}
}

// newCluster builds the namespaces and links, the host dirs with the
// test installation's images, and `minions init`s nothing yet.
func newCluster(t testing.TB) *mhCluster {
	t.Helper()
	if skipWhy != "" {
		t.Skip(skipWhy)
	}
	clientNS := os.Getenv(netnsEnv)
	if clientNS == "" {
		// Never wire the host's own network namespace.
		t.Skip("the multi-host harness runs only inside the e2e network namespace (TestMain)")
	}
	for _, bin := range []string{"nsenter", "ssh", "scp"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is not installed", bin)
		}
	}
	removeStaleMultiHostNetns()
	c := &mhCluster{t: t, pid: os.Getpid(), clientNS: clientNS}
	c.root = filepath.Join(os.Getenv(dirEnv), fmt.Sprintf("mh%d", time.Now().UnixNano()%1e6))
	if err := os.MkdirAll(c.root, 0o755); err != nil {
		t.Fatal(err)
	}
	c.keysDir = filepath.Join(c.root, "keys")
	if err := os.MkdirAll(c.keysDir, 0o700); err != nil {
		t.Fatal(err)
	}
	c.brNS = fmt.Sprintf("%sbr-%d", mhPrefix, c.pid)
	for i, name := range []string{"cp", "n1", "n2"} {
		h := &mhHost{name: name, ns: fmt.Sprintf("%s%s-%d", mhPrefix, name, c.pid), addr: fmt.Sprintf("10.231.0.%d", i+1),
			dir: filepath.Join(c.root, name)}
		h.state, h.runDir = filepath.Join(h.dir, "s"), filepath.Join(h.dir, "r")
		noteInstallation(h.state, h.runDir)
		c.hosts = append(c.hosts, h)
	}
	c.cp, c.n1, c.n2 = c.hosts[0], c.hosts[1], c.hosts[2]
	t.Cleanup(c.teardown)

	// The link: a bridge in its own namespace, a veth to each host and
	// one to the test. Both ends are created straight in their target
	// namespaces: nothing is ever made in (or moved through) another one.
	for _, ns := range []string{c.brNS, c.cp.ns, c.n1.ns, c.n2.ns} {
		ipCmd(t, "netns", "add", ns)
		ipCmd(t, "-n", ns, "link", "set", "lo", "up")
	}
	ipCmd(t, "-n", c.brNS, "link", "add", "mhbr", "type", "bridge")
	ipCmd(t, "-n", c.brNS, "link", "set", "mhbr", "up")
	for i, h := range c.hosts {
		port := fmt.Sprintf("vb%d", i+1)
		ipCmd(t, "-n", c.brNS, "link", "add", port, "type", "veth", "peer", "name", "mh0", "netns", h.ns)
		ipCmd(t, "-n", c.brNS, "link", "set", port, "master", "mhbr", "up")
		ipCmd(t, "-n", h.ns, "addr", "add", h.addr+"/24", "dev", "mh0")
		ipCmd(t, "-n", h.ns, "link", "set", "mh0", "up")
	}
	ipCmd(t, "-n", c.brNS, "link", "add", "vbc", "type", "veth", "peer", "name", "mhc0", "netns", clientNS)
	ipCmd(t, "-n", c.brNS, "link", "set", "vbc", "master", "mhbr", "up")
	ipCmd(t, "-n", clientNS, "addr", "add", "10.231.0.100/24", "dev", "mhc0")
	ipCmd(t, "-n", clientNS, "link", "set", "mhc0", "up")

	// Each host's installation: its own state (0700 under a 0755 root so
	// jailed VM processes reach their files). The cp gets the images
	// TestMain built, hard-linked (base images are immutable files); the
	// nodes start with none and fetch them from the cp by checksum.
	for _, h := range c.hosts {
		if err := os.MkdirAll(h.runDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(h.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(h.state, "images"), 0o700); err != nil {
			t.Fatal(err)
		}
		if h != c.cp {
			continue
		}
		for _, sub := range []string{"kernels", "initramfs", "rootfs"} {
			src := filepath.Join(stateDir, "images", sub)
			if _, err := os.Stat(src); err != nil {
				continue
			}
			if out, err := exec.Command("cp", "-al", src, filepath.Join(h.state, "images", sub)).CombinedOutput(); err != nil {
				t.Fatalf("copy images to %s: %v\n%s", h.name, err, out)
			}
		}
	}
	c.apiPort, c.sshPort, c.httpPort, c.natsPort, c.adminPort = freeTCPPort(t), freeTCPPort(t), freeTCPPort(t), freeTCPPort(t), freeTCPPort(t)
	c.config = filepath.Join(c.root, "cp.toml")
	conf := fmt.Sprintf(`bind = "%[1]s:%[2]d"
insecure_http = true
admin_bind = "127.0.0.1:%[3]d"
ssh_bind = "%[1]s:%[4]d"
http_bind = "%[1]s:%[5]d"
proxy_rate = -1
nats_bind = "%[1]s:%[6]d"
advertise = %[1]q
`, c.cp.addr, c.apiPort, c.adminPort, c.sshPort, c.httpPort, c.natsPort)
	if err := os.WriteFile(c.config, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

// teardown destroys what the test left: every process of every host
// (VMs included), then the namespaces (their TAPs, bridges and nftables
// tables go with them).
func (c *mhCluster) teardown() {
	for _, h := range c.hosts {
		if h.agent != nil && h.agent.running() {
			h.agent.cmd.Process.Kill()
			<-h.agent.done
		}
	}
	// VM processes run in their own sessions: find them by their dirs.
	// Their cgroups are removed once they are gone (no driver ends them).
	var cgroups []string
	for i := 0; i < 50; i++ {
		left := 0
		for _, h := range c.hosts {
			for _, p := range procsMentioning(h.dir) {
				var pid int
				fmt.Sscanf(p, "/proc/%d/cmdline", &pid)
				if pid != os.Getpid() && pid > 0 {
					cgroups = append(cgroups, vmCgroups(pid)...)
					syscall.Kill(pid, syscall.SIGKILL)
					left++
				}
			}
		}
		if left == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	removeCgroupDirs(cgroups)
	for _, h := range c.hosts {
		checkInstallation(c.t, h.state, h.runDir)
	}
	exec.Command("ip", "-n", c.clientNS, "link", "del", "mhc0").Run()
	for _, ns := range []string{c.cp.ns, c.n1.ns, c.n2.ns, c.brNS} {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil && !strings.Contains(string(out), "No such file") {
			c.t.Logf("ip netns del %s: %v: %s", ns, err, out)
		}
	}
}

// env is the environment of host h's minions processes.
func (h *mhHost) env() []string {
	env := append(os.Environ(), "MINIONS_STATE_DIR="+h.state, "MINIONS_RUN_DIR="+h.runDir,
		"MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"), "MINIONS_HOST=", "MINIONS_API_KEY=")
	return append(env, h.extraEnv...)
}

// command is `minions args...` in h's network namespace with h's dirs.
func (h *mhHost) command(ctx context.Context, args ...string) *exec.Cmd {
	argv := append([]string{"--net=/run/netns/" + h.ns, "--", filepath.Join(binDir, "minions")}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	cmd.Env = h.env()
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// run runs `minions args...` on h as root (in-process, or through h's
// daemon socket when one runs there).
func (h *mhHost) run(t testing.TB, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	return runResult(t, h.command(ctx, args...), "")
}

func runResult(t testing.TB, cmd *exec.Cmd, stdin string) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr, cmd.Stdin = &out, &errb, strings.NewReader(stdin)
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%v: %v", cmd.Args, err)
	}
	return r
}

// must runs `minions args...` on h and fails the test unless it exits 0.
func (h *mhHost) must(t testing.TB, args ...string) string {
	t.Helper()
	r := h.run(t, args...)
	if r.code != 0 {
		t.Fatalf("%s: minions %s: %s", h.name, strings.Join(args, " "), r)
	}
	return r.stdout
}

func (h *mhHost) mustJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out := h.must(t, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("%s: minions %v: decode %q: %v", h.name, args, out, err)
	}
}

// start runs `minions args...` on h in the background as its agent.
func (h *mhHost) start(t testing.TB, args ...string) *mhProc {
	t.Helper()
	p := &mhProc{cmd: h.command(context.Background(), args...), log: &logBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	// Its own process group: a kill reaches it, not the test.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	h.agent = p
	return p
}

// waitWarm waits until the cp's daemon has built the template of the
// default image (minimal) in the default shape (1 vCPU, 512 MiB): the
// cluster runs with warm templates on, as by default, and a create of
// that shape on the cp is then a warm clone.
func (c *mhCluster) waitWarm(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for !c.cp.hasTemplate(512) {
		if time.Now().After(deadline) {
			t.Fatalf("the cp built no template of the default image and shape in 3 minutes")
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// hasTemplate reports whether h has a complete template of the minimal
// image at 1 vCPU and memMiB.
func (h *mhHost) hasTemplate(memMiB int) bool {
	ts, _ := engine.ReadTemplates(h.state)
	for _, tp := range ts {
		if strings.HasPrefix(tp.Image, "minimal@") && tp.CPUs == 1 && tp.MemoryMiB == memMiB {
			return true
		}
	}
	return false
}

// initControlPlane sets the cp's host up (`init`) and makes an admin
// token: serve refuses to put its API beyond loopback while no token
// exists.
func (c *mhCluster) initControlPlane(t testing.TB) {
	t.Helper()
	c.cp.must(t, "init", "--config", c.config)
	c.cp.must(t, "token", "create", "--name", "e2e-admin")
}

// startControlPlane runs `minions serve` on the cp and waits for its API
// and SSH front door.
func (c *mhCluster) startControlPlane(t testing.TB) {
	t.Helper()
	p := c.cp.start(t, "serve", "--config", c.config)
	deadline := time.Now().Add(60 * time.Second)
	for _, port := range []int{c.apiPort, c.sshPort} {
		addr := net.JoinHostPort(c.cp.addr, strconv.Itoa(port))
		for {
			conn, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				conn.Close()
				break
			}
			if !p.running() {
				t.Fatalf("minions serve on the cp exited:\n%s", lastLines(p.log.String(), 40))
			}
			if time.Now().After(deadline) {
				t.Fatalf("the cp does not listen on %s:\n%s", addr, lastLines(p.log.String(), 40))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if c.known == "" {
		b, err := os.ReadFile(filepath.Join(c.cp.state, "keys", "ssh_host_ed25519"))
		if err != nil {
			t.Fatalf("cp ssh host key: %v", err)
		}
		s, err := ssh.ParsePrivateKey(b)
		if err != nil {
			t.Fatal(err)
		}
		c.known = filepath.Join(c.keysDir, "known_hosts")
		line := fmt.Sprintf("[%s]:%d %s", c.cp.addr, c.sshPort, ssh.MarshalAuthorizedKey(s.PublicKey()))
		if err := os.WriteFile(c.known, []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// joinSupportsNoSystemd reports whether `node join` has --no-systemd
// (engineer w2's join that runs init and installs the unit); without it
// join only exchanges the token and runs the node in the foreground.
func (c *mhCluster) joinSupportsNoSystemd(t testing.TB) bool {
	r := c.n1.run(t, "node", "join", "--help")
	return strings.Contains(r.stdout+r.stderr, "no-systemd")
}

// join adds node h on the cp and runs the printed join command on h in
// the background; it returns the join command as printed.
func (c *mhCluster) join(t testing.TB, h *mhHost, noSystemd bool, extra ...string) string {
	t.Helper()
	var inv struct {
		Token   string `json:"token"`
		Command string `json:"command"`
	}
	// The join address is known once the cp's cluster is up: a host add
	// before that is refused ("no address for new hosts to reach").
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(c.cp.agent.log.String(), `"msg":"cluster ready"`); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the cp's cluster is not ready after 30 s:\n%s", lastLines(c.cp.agent.log.String(), 20))
		}
	}
	c.cp.mustJSON(t, &inv, "host", "add", h.name)
	want := fmt.Sprintf("minions node join %s --token mjt_", c.api())
	if !strings.HasPrefix(inv.Command, want) || !strings.HasSuffix(inv.Command, inv.Token) {
		t.Fatalf("host add %s: join command %q, want %q…", h.name, inv.Command, want)
	}
	args := strings.Fields(strings.TrimPrefix(inv.Command, "minions "))
	if noSystemd {
		args = append(args, "--no-systemd")
	}
	c.startNode(t, h, append(args, extra...)...)
	return inv.Command
}

// startNode runs a node agent on h (`node join ...` or `node`).
func (c *mhCluster) startNode(t testing.TB, h *mhHost, args ...string) {
	t.Helper()
	p := h.start(t, args...)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s: %s log:\n%s", h.name, strings.Join(args[:min(2, len(args))], " "), lastLines(p.log.String(), 40))
		}
	})
}

// hostJSON is `host list --json` output; Subnet is there once hosts get
// their own subnets.
type hostJSON struct {
	ID            string    `json:"id"`
	Name          string    `json:"name"`
	Local         bool      `json:"local"`
	Address       string    `json:"address"`
	State         string    `json:"state"`
	CPUs          int       `json:"cpus"`
	MemoryMiB     int64     `json:"memory_mib"`
	DiskMiB       int64     `json:"disk_mib"`
	VMs           int       `json:"vms"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	Subnet        *string   `json:"subnet"`
}

func (c *mhCluster) hostList(t testing.TB) map[string]hostJSON {
	t.Helper()
	var list []hostJSON
	c.cp.mustJSON(t, &list, "host", "list")
	out := map[string]hostJSON{}
	for _, h := range list {
		if h.Local {
			out["cp"] = h
		} else {
			out[h.Name] = h
		}
	}
	return out
}

// waitHosts polls `host list` until ok holds, up to timeout; it returns
// the last list and how long it took.
func (c *mhCluster) waitHosts(t testing.TB, timeout time.Duration, ok func(map[string]hostJSON) bool) (map[string]hostJSON, time.Duration, bool) {
	t.Helper()
	start := time.Now()
	for {
		l := c.hostList(t)
		if ok(l) {
			return l, time.Since(start), true
		}
		if time.Since(start) > timeout {
			return l, time.Since(start), false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func allReady(names ...string) func(map[string]hostJSON) bool {
	return func(l map[string]hostJSON) bool {
		for _, n := range names {
			if l[n].State != "ready" {
				return false
			}
		}
		return true
	}
}

// mhUser is a user of the cluster, with an API token and an SSH key.
type mhUser struct {
	name  string
	token string
	key   sshKey
}

func (c *mhCluster) addUser(t testing.TB, name string) mhUser {
	t.Helper()
	u := mhUser{name: name, key: newSSHKey(t, c.keysDir, name)}
	c.cp.must(t, "user", "add", name, "--ssh-key", u.key.pubFile)
	c.cp.must(t, "quota", "set", name, "--vms", "0", "--cpus", "0")
	var tok struct {
		Secret string `json:"secret"`
	}
	c.cp.mustJSON(t, &tok, "token", "create", "--user", name)
	if !strings.HasPrefix(tok.Secret, "mn_") {
		t.Fatalf("token for %s: %+v", name, tok)
	}
	u.token = tok.Secret
	return u
}

// as runs the minions CLI on the users' machine (the test's namespace)
// against the cp's API with u's token.
func (c *mhCluster) as(t testing.TB, u mhUser, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "minions"), args...)
	cmd.Env = append(os.Environ(), "MINIONS_HOST="+c.api(), "MINIONS_API_KEY="+u.token, "HOME="+c.keysDir,
		"MINIONS_STATE_DIR="+filepath.Join(c.root, "nowhere"), "MINIONS_RUN_DIR="+filepath.Join(c.root, "nowhere"))
	cmd.WaitDelay = 5 * time.Second
	return runResult(t, cmd, stdin)
}

// openssh runs OpenSSH's tool (ssh or scp) as u against the cp's SSH
// front door, pinning its host key.
func (c *mhCluster) openssh(t testing.TB, u mhUser, tool string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return runResult(t, c.opensshCmd(ctx, u, tool, args...), "")
}

func (c *mhCluster) opensshCmd(ctx context.Context, u mhUser, tool string, args ...string) *exec.Cmd {
	portFlag := "-P"
	if tool == "ssh" {
		portFlag = "-p"
	}
	all := []string{"-F", "/dev/null", "-i", u.key.file, portFlag, strconv.Itoa(c.sshPort),
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
		"-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + c.known, "-o", "ConnectTimeout=10"}
	cmd := exec.CommandContext(ctx, tool, append(all, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+c.keysDir)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// vmProcs returns the PIDs of the QEMU processes of VM id on host h.
func (h *mhHost) vmProcs(id string) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("qemu-system")) || !bytes.Contains(b, []byte(h.dir)) || !bytes.Contains(b, []byte(id)) {
			continue
		}
		var pid int
		fmt.Sscanf(p, "/proc/%d/cmdline", &pid)
		out = append(out, pid)
	}
	return out
}

// hostIsDaemonURL reports whether a `create --host NAME` failed because
// this CLI still reads --host as the URL of a remote daemon (no placement
// on cluster hosts yet: engineer w1's routing).
func hostIsDaemonURL(r result, name string) bool {
	return r.code != 0 && strings.Contains(r.stdout+r.stderr, "minions api at http://"+name)
}

// images lists the root filesystem images and kernels in h's catalogue.
func (h *mhHost) images() (rootfs, kernels []string) {
	rootfs, _ = filepath.Glob(filepath.Join(h.state, "images", "rootfs", "*", "*", "rootfs.ext4"))
	kernels, _ = filepath.Glob(filepath.Join(h.state, "images", "kernels", "*", "kernel.json"))
	return rootfs, kernels
}

// startJoined starts the control plane and joins both nodes, ready.
func (c *mhCluster) startJoined(t testing.TB) {
	t.Helper()
	c.initControlPlane(t)
	c.startControlPlane(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("cp log:\n%s", lastLines(c.cp.agent.log.String(), 80))
		}
	})
	noSystemd := c.joinSupportsNoSystemd(t)
	if !noSystemd {
		for _, h := range []*mhHost{c.n1, c.n2} {
			h.must(t, "init")
		}
	}
	for _, h := range []*mhHost{c.n1, c.n2} {
		c.join(t, h, noSystemd)
	}
	if l, took, ok := c.waitHosts(t, 60*time.Second, allReady("cp", "n1", "n2")); !ok {
		t.Fatalf("hosts not ready after %s: %+v", took, l)
	}
}

// rowName is the name of host h's row: the harness's name for a node,
// cpHostName for the control plane's host.
func (c *mhCluster) rowName(h *mhHost) string {
	if h == c.cp && c.cpHostName != "" {
		return c.cpHostName
	}
	return h.name
}
