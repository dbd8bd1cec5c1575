package e2e

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTwoVMs is issue 2's proof: two VMs boot, exec works with exit codes
// and stdin, the host reaches both, they cannot reach or spoof each other,
// stop/start keeps the disk, and destroy leaves nothing behind.
func TestTwoVMs(t *testing.T) {
	setup(t)
	var a, b vmJSON
	mustJSON(t, &a, "create", "alpha", "--cpus", "1", "--memory", "256")
	mustJSON(t, &b, "create", "beta", "--cpus", "2", "--memory", "512")
	defer minions(t, "", "destroy", "alpha", "--yes")
	defer minions(t, "", "destroy", "beta", "--yes")
	if a.Status != "running" || b.Status != "running" || a.IP == "" || b.IP == "" || a.IP == b.IP {
		t.Fatalf("created vms: %+v %+v", a, b)
	}

	var list []vmJSON
	mustJSON(t, &list, "list")
	if len(list) != 2 || list[0].Name != "alpha" || list[1].Name != "beta" || list[0].PID == 0 || list[1].CPUs != 2 {
		t.Fatalf("list: %+v", list)
	}
	if out := must(t, "list"); !strings.Contains(out, "NAME") || !strings.Contains(out, a.IP) {
		t.Fatalf("list table:\n%s", out)
	}

	t.Run("exec", func(t *testing.T) {
		out := must(t, "exec", "alpha", "--", "uname", "-a")
		if !strings.Contains(out, "Linux alpha") || !strings.Contains(out, "cloud-amd64") {
			t.Fatalf("uname -a in guest: %q", out)
		}
		if r := minions(t, "", "exec", "alpha", "--", "sh", "-c", "echo out; echo err >&2; exit 7"); r.code != 7 || r.stdout != "out\n" || r.stderr != "err\n" {
			t.Fatalf("exit status: %s", r)
		}
		if r := minions(t, "hello from stdin\n", "exec", "beta", "cat"); r.code != 0 || r.stdout != "hello from stdin\n" {
			t.Fatalf("stdin: %s", r)
		}
		if out := must(t, "exec", "beta", "hostname"); strings.TrimSpace(out) != "beta" {
			t.Fatalf("hostname = %q", out)
		}
		var st struct {
			Hostname string `json:"hostname"`
			MemTotal uint64 `json:"mem_total"`
			UptimeS  float64
		}
		mustJSON(t, &st, "status", "beta")
		if st.Hostname != "beta" || st.MemTotal < 300<<20 {
			t.Fatalf("status: %+v", st)
		}
	})

	t.Run("dead-relay-is-restarted", func(t *testing.T) {
		pids := relayPIDs(b.ID)
		if len(pids) != 1 {
			t.Fatalf("relay processes of beta: %v", pids)
		}
		syscall.Kill(pids[0], syscall.SIGKILL)
		// The next command reconciles: a new relay, and the agent answers.
		if out := must(t, "exec", "beta", "hostname"); strings.TrimSpace(out) != "beta" {
			t.Fatalf("exec after the relay died: %q", out)
		}
		if now := relayPIDs(b.ID); len(now) != 1 || now[0] == pids[0] {
			t.Fatalf("relay after repair: %v (was %v)", now, pids)
		}
	})

	t.Run("network", func(t *testing.T) {
		// The host reaches both VMs.
		for _, ip := range []string{a.IP, b.IP} {
			if out, err := exec.Command("ping", "-c", "1", "-W", "3", ip).CombinedOutput(); err != nil {
				t.Fatalf("host cannot ping vm %s: %v\n%s", ip, err, out)
			}
		}
		// A web server in beta, reachable from the host (positive control)...
		must(t, "exec", "beta", "--", "sh", "-c", "mkdir -p /srv && echo beta-page > /srv/index.html && httpd -p 8080 -h /srv")
		if out, err := exec.Command("curl", "-sS", "-m", "5", "http://"+b.IP+":8080/").CombinedOutput(); err != nil || !strings.Contains(string(out), "beta-page") {
			t.Fatalf("host cannot fetch from beta: %v %s", err, out)
		}
		// ...but not from alpha: neither ICMP nor TCP.
		if r := minions(t, "", "exec", "alpha", "--", "ping", "-c", "1", "-W", "2", b.IP); r.code == 0 {
			t.Fatalf("alpha pinged beta: %s", r)
		}
		if r := minions(t, "", "exec", "alpha", "--", "timeout", "5", "wget", "-q", "-O", "-", "http://"+b.IP+":8080/"); r.code == 0 || strings.Contains(r.stdout, "beta-page") {
			t.Fatalf("alpha reached beta over TCP: %s", r)
		}
		// Spoofing: alpha's own address reaches the gateway; frames with
		// a forged source (an unused address, or beta's) never get past
		// alpha's port. The address is really on alpha's eth0, so the
		// guest sends the packet; a sniffer on the bridge sees what the
		// host receives (a failed ping alone proves nothing: the reply to
		// beta's address would go to beta).
		gw := gateway(a.IP)
		mac := strings.TrimSpace(must(t, "exec", "alpha", "cat", "/sys/class/net/eth0/address"))
		s := sniffBridge(t, "minions0")
		if r := minions(t, "", "exec", "alpha", "--", "ping", "-c", "1", "-W", "2", gw); r.code != 0 {
			t.Fatalf("alpha cannot ping its gateway (positive control): %s", r)
		}
		if !s.seen(mac, a.IP) {
			t.Fatalf("the sniffer saw no frame from alpha (%s %s): it cannot see drops", mac, a.IP)
		}
		for _, src := range []string{forge(a.IP, b.IP), b.IP} {
			must(t, "exec", "alpha", "--", "ip", "addr", "add", src+"/32", "dev", "eth0")
			s.reset()
			r := minions(t, "", "exec", "alpha", "--", "ping", "-c", "2", "-W", "1", "-I", src, gw)
			if strings.Contains(r.stderr+r.stdout, "bind") {
				t.Errorf("ping -I %s could not bind, so it tested nothing: %s", src, r)
			}
			if s.seen(mac, src) {
				t.Errorf("a frame from alpha with the forged source %s entered the bridge", src)
			}
			if r.code == 0 {
				t.Errorf("alpha's ping from the forged source %s was answered: %s", src, r)
			}
			must(t, "exec", "alpha", "--", "ip", "addr", "del", src+"/32", "dev", "eth0")
		}
	})

	t.Run("stop-start-keeps-disk", func(t *testing.T) {
		must(t, "exec", "alpha", "--", "sh", "-c", "echo kept > /root/file && sync")
		var v vmJSON
		mustJSON(t, &v, "stop", "alpha")
		if v.Status != "stopped" {
			t.Fatalf("after stop: %+v", v)
		}
		if r := minions(t, "", "exec", "alpha", "true"); r.code == 0 || !strings.Contains(r.stderr, "stopped") {
			t.Fatalf("exec on a stopped vm: %s", r)
		}
		mustJSON(t, &v, "start", "alpha")
		if v.Status != "running" || v.IP != a.IP {
			t.Fatalf("after start: %+v (ip was %s)", v, a.IP)
		}
		if out := must(t, "exec", "alpha", "cat", "/root/file"); out != "kept\n" {
			t.Fatalf("file after restart: %q", out)
		}
		mustJSON(t, &v, "restart", "alpha")
		if out := must(t, "exec", "alpha", "cat", "/root/file"); out != "kept\n" {
			t.Fatalf("file after restart: %q", out)
		}
	})

	t.Run("destroy-leaves-nothing", func(t *testing.T) {
		must(t, "destroy", "beta", "--yes")
		assertGone(t, b)
	})
}

// TestCreateKilledMidway: kill -9 of the CLI during a create leaves
// nothing behind after the next command.
func TestCreateKilledMidway(t *testing.T) {
	setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "minions"), "create", "doomed")
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.Contains(sc.Text(), ": agent") { // the VM is booting
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	var list []vmJSON
	mustJSON(t, &list, "list") // the next command recovers
	for _, v := range list {
		if v.Name == "doomed" {
			t.Fatalf("half-created vm survived: %+v", v)
		}
	}
	// Nothing with the doomed VM's ID is left: no process, TAP, dirs.
	entries, _ := os.ReadDir(filepath.Join(stateDir, "vms"))
	for _, e := range entries {
		if !knownVM(t, e.Name()) {
			t.Fatalf("leftover vm dir %s", e.Name())
		}
	}
	assertNoStrays(t)
	// The name is free again.
	var v vmJSON
	mustJSON(t, &v, "create", "doomed", "--memory", "256")
	must(t, "destroy", "doomed", "--yes")
	assertGone(t, v)
}

// TestBadInput: clear errors that change nothing.
func TestBadInput(t *testing.T) {
	setup(t)
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"create", "Bad_Name"}, 2, "invalid vm name"},
		{[]string{"create", "x", "--os", "nosuchos"}, 3, "minimal@"},
		{[]string{"create", "x", "--cpus", "0"}, 2, "invalid cpus"},
		{[]string{"exec", "ghost", "true"}, 3, `no vm named "ghost"`},
		{[]string{"destroy", "ghost", "--yes"}, 3, `no vm named "ghost"`},
		{[]string{"frobnicate"}, 2, "unknown command"},
	} {
		r := minions(t, "", tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.msg) {
			t.Errorf("minions %v: want exit %d and %q, got %s", tc.args, tc.code, tc.msg, r)
		}
	}
	var list []vmJSON
	mustJSON(t, &list, "list")
	for _, v := range list {
		if v.Name == "x" {
			t.Fatalf("a failed create left vm x")
		}
	}
	// JSON errors carry a stable code.
	r := minions(t, "", "--json", "exec", "ghost", "true")
	if !strings.Contains(r.stdout, `"code": "not_found"`) && !strings.Contains(r.stdout, `"code":"not_found"`) {
		t.Fatalf("json error: %s", r)
	}
}
