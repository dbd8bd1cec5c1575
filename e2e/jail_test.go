package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestJail checks the jail of real VMs created through the CLI: QEMU and
// the agent relay run as the VM's own uid, in a mount namespace of their
// own, in the VM's cgroup whose memory limit is guest memory + 256 MiB;
// as that uid the store, the keys and another VM's disk cannot be read,
// neither on the host nor inside the VM's mount namespace; the VM works;
// destroy removes the cgroup.
func TestJail(t *testing.T) {
	setup(t)
	var a, b vmJSON
	mustJSON(t, &a, "create", "jail-a", "--cpus", "1", "--memory", "256")
	defer minions(t, "", "destroy", "jail-a", "--yes")
	mustJSON(t, &b, "create", "jail-b", "--cpus", "1", "--memory", "256")
	defer minions(t, "", "destroy", "jail-b", "--yes")

	if out := must(t, "exec", "jail-a", "--", "hostname"); strings.TrimSpace(out) != "jail-a" {
		t.Fatalf("exec in the jailed vm: %q", out)
	}

	uidA := procStatusUID(t, a.PID)
	uidB := procStatusUID(t, b.PID)
	if uidA == 0 || uidB == 0 || uidA == uidB {
		t.Fatalf("qemu uids: %s %d, %s %d: want two distinct non-root uids", a.Name, uidA, b.Name, uidB)
	}
	relays := relayPIDs(a.ID)
	if len(relays) != 1 {
		t.Fatalf("relays of %s: %v", a.Name, relays)
	}
	if u := procStatusUID(t, relays[0]); u != uidA {
		t.Errorf("relay runs as uid %d, qemu as %d", u, uidA)
	}
	hostNS, _ := os.Readlink("/proc/self/ns/mnt")
	for _, pid := range []int{a.PID, relays[0]} {
		if ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); ns == hostNS {
			t.Errorf("pid %d shares the host's mount namespace", pid)
		}
	}

	// The cgroup and its memory limit.
	cgFile, limit := memoryCgroup(t, a.PID)
	// In the installation's own group, named like its RAM file dir.
	if want := "/minions/" + filepath.Base(memoryDir()) + "/" + a.ID; !strings.HasSuffix(filepath.Dir(cgFile), want) {
		t.Errorf("qemu's memory cgroup is %s, want ...%s", filepath.Dir(cgFile), want)
	}
	if want := int64(256+256) << 20; limit != want {
		t.Errorf("memory limit %d, want guest 256 MiB + 256 MiB overhead = %d", limit, want)
	}
	if c, _ := memoryCgroup(t, relays[0]); c != cgFile {
		t.Errorf("relay in %s, qemu in %s", c, cgFile)
	}

	// As a's uid: the control plane's secrets and b's disk are out of
	// reach on the host, and absent from a's mount namespace.
	secrets := []string{
		filepath.Join(stateDir, "minions.db"), // users, tokens, the proxy secret (setting proxy_secret)
		filepath.Join(stateDir, "keys", "agent_ed25519"),
		filepath.Join(stateDir, "vms", b.ID, "disk.qcow2"),
	}
	if _, err := os.Stat(filepath.Join(stateDir, "minions.db-wal")); err == nil {
		secrets = append(secrets, filepath.Join(stateDir, "minions.db-wal"))
	}
	own := filepath.Join(stateDir, "vms", a.ID, "disk.qcow2")
	asUID := func(nsenter bool, args ...string) error {
		argv := append([]string{"--reuid=" + strconv.Itoa(uidA), "--regid=" + strconv.Itoa(uidA), "--clear-groups"}, args...)
		cmd := exec.Command("setpriv", argv...)
		if nsenter {
			cmd = exec.Command("nsenter", append([]string{"-t", strconv.Itoa(a.PID), "-m", "setpriv"}, argv...)...)
		}
		return cmd.Run()
	}
	if err := asUID(false, "cat", "/etc/hostname"); err != nil {
		t.Fatalf("setpriv cannot run a command as uid %d: %v", uidA, err)
	}
	for _, f := range secrets {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := asUID(false, "cat", f); err == nil {
			t.Errorf("uid %d reads %s on the host", uidA, f)
		}
		if err := asUID(true, "cat", f); err == nil {
			t.Errorf("uid %d reads %s in its mount namespace", uidA, f)
		}
		if err := asUID(true, "test", "-e", f); err == nil {
			t.Errorf("%s exists in %s's mount namespace", f, a.Name)
		}
	}
	// Its own disk is there and its own (QEMU has it open read-write).
	if err := asUID(true, "test", "-r", own, "-a", "-w", own); err != nil {
		t.Errorf("uid %d cannot use its own disk %s in its namespace: %v", uidA, own, err)
	}

	must(t, "destroy", "jail-a", "--yes")
	if _, err := os.Stat(filepath.Dir(cgFile)); !os.IsNotExist(err) {
		t.Errorf("cgroup %s left after destroy (%v)", filepath.Dir(cgFile), err)
	}
}

// procStatusUID returns the real uid of pid.
func procStatusUID(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			u, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return u
		}
	}
	t.Fatalf("no Uid in /proc/%d/status", pid)
	return 0
}

// memoryCgroup returns the memory limit file of pid's cgroup (cgroup v1's
// memory controller, or v2's unified group) and the limit in it.
func memoryCgroup(t *testing.T, pid int) (string, int64) {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var v1, v2 string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		switch {
		case len(parts) != 3:
		case strings.Contains(","+parts[1]+",", ",memory,"):
			v1 = parts[2]
		case parts[0] == "0" && parts[1] == "":
			v2 = parts[2]
		}
	}
	file := filepath.Join("/sys/fs/cgroup", v2, "memory.max")
	if v1 != "" {
		file = filepath.Join("/sys/fs/cgroup/memory", v1, "memory.limit_in_bytes")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("pid %d: %v", pid, err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %q", file, b)
	}
	return file, n
}
