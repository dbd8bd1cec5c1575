package e2e

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func gateway(ip string) string {
	a := netip.MustParseAddr(ip).As4()
	return netip.AddrFrom4([4]byte{a[0], a[1], 0, 1}).String()
}

// forge returns an unused address in the VMs' subnet.
func forge(ips ...string) string {
	a := netip.MustParseAddr(ips[0]).As4()
	return netip.AddrFrom4([4]byte{a[0], a[1], 200, 77}).String()
}

func knownVM(t *testing.T, id string) bool {
	var list []vmJSON
	mustJSON(t, &list, "list")
	for _, v := range list {
		if v.ID == id {
			return true
		}
	}
	return false
}

// assertGone checks that nothing of VM v is left: process, TAP, sockets,
// disk, address.
func assertGone(t *testing.T, v vmJSON) {
	t.Helper()
	if v.ID == "" {
		t.Fatal("assertGone without an id")
	}
	if _, err := os.Stat(filepath.Join(stateDir, "vms", v.ID)); !os.IsNotExist(err) {
		t.Errorf("vm dir of %s still exists", v.Name)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "run", v.ID)); !os.IsNotExist(err) {
		t.Errorf("run dir (sockets) of %s still exists", v.Name)
	}
	if out, _ := exec.Command("ip", "-o", "link", "show").CombinedOutput(); strings.Contains(string(out), "mn"+v.ID) {
		t.Errorf("tap of %s still exists:\n%s", v.Name, out)
	}
	if pids := procsMentioning(v.ID); len(pids) > 0 {
		t.Errorf("processes of %s still run: %v", v.Name, pids)
	}
	var list []vmJSON
	mustJSON(t, &list, "list")
	for _, o := range list {
		if o.ID == v.ID || (v.IP != "" && o.IP == v.IP) {
			t.Errorf("vm %s (or its address) still listed: %+v", v.Name, o)
		}
	}
}

// assertNoStrays checks that every minions-started process belongs to a
// listed VM.
func assertNoStrays(t *testing.T) {
	t.Helper()
	var list []vmJSON
	mustJSON(t, &list, "list")
	known := map[string]bool{}
	for _, v := range list {
		known[v.ID] = true
	}
	runDir := filepath.Join(stateDir, "run") + "/"
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		i := bytes.Index(b, []byte(runDir))
		if i < 0 {
			continue
		}
		id := string(b[i+len(runDir):])
		if j := strings.IndexAny(id, "/\x00"); j >= 0 {
			id = id[:j]
		}
		if !known[id] {
			t.Errorf("stray process %s for unknown vm %s: %q", p, id, bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		}
	}
}

func procsMentioning(s string) []string {
	var out []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(s)) {
			out = append(out, p)
		}
	}
	return out
}

// relayPIDs returns the agent relay processes of VM id.
func relayPIDs(id string) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("agent-relay")) || !bytes.Contains(b, []byte("/"+id+"/")) {
			continue
		}
		var pid int
		fmt.Sscanf(p, "/proc/%d/cmdline", &pid)
		out = append(out, pid)
	}
	return out
}
