package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor/qemu"
	"github.com/minionsdev/minions/vm/jail"
)

// TestWarmCreateJailed: warm create with the per-VM jail on, as `minions
// serve` runs by default (docs/templates.md, "Under the jail"). The
// engine builds a template of the minimal image and creates two VMs from
// it; both are restores (Boot warm) with identities of their own
// (hostname, machine-id, address, MAC, 32 bytes of /dev/urandom, clock),
// each one's disk is an overlay of the image alone (a copy of the
// template's disk, so moves ship it whole), each QEMU runs as a non-root
// uid of its own and maps the template's RAM
// through the sealed memfd (the two share its pages), neither maps the
// template's RAM file, and the template's RAM file and disk are root's,
// the disk readable by the clones' uids and writable by none.
func TestWarmCreateJailed(t *testing.T) {
	needVMs(t)
	w := newWarmEngineWith(t, "mnwarmj0", "10.226.0.0/24", nil, true)
	ctx := context.Background()
	tpl, err := w.l.WarmTemplate(ctx, "minimal", 1, 256, 0, nil)
	if err != nil {
		t.Fatalf("warm template under the jail: %v", err)
	}
	t.Logf("template %s of %s built jailed in %d ms", tpl.Key, tpl.Image, tpl.BuildMillis)
	if out, err := exec.Command("du", "-k", tpl.Disk).CombinedOutput(); err == nil {
		t.Logf("template disk: %s KiB allocated", strings.Fields(string(out))[0])
	}
	ram := filepath.Join(w.l.Config().StateDir, "templates", tpl.Key, qemu.TemplateMemoryFile)
	for _, f := range []struct {
		path string
		mode uint32 // 0: any
	}{{ram, 0}, {tpl.Disk, 0o644}} {
		var st unix.Stat_t
		if err := unix.Stat(f.path, &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != 0 || (f.mode != 0 && st.Mode&0o777 != f.mode) {
			t.Errorf("%s: uid %d, mode %o; want root's (mode %o)", f.path, st.Uid, st.Mode&0o777, f.mode)
		}
	}

	a := w.create(t, "warmj-a", false)
	b := w.create(t, "warmj-b", false)
	memfd := "/memfd:" + templateMemfdName(t, ram)
	type facts struct{ host, mid, rnd, ip, mac string }
	seen := map[string]facts{}
	uids := map[int]string{}
	for _, inst := range []engine.Instance{a, b} {
		if inst.Boot != engine.BootWarm {
			t.Fatalf("%s: Boot = %q, want warm (warnings %v)", inst.Name, inst.Boot, inst.Warnings)
		}
		f := facts{
			host: w.run(t, inst, "hostname"),
			mid:  w.run(t, inst, "cat /etc/machine-id"),
			rnd:  w.run(t, inst, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"),
			ip:   w.run(t, inst, "ip -4 -o addr show dev eth0"),
			mac:  w.run(t, inst, "cat /sys/class/net/eth0/address"),
		}
		if f.host != inst.Name || !strings.Contains(f.ip, " "+inst.IP+"/") || f.mac != inst.MAC || len(f.rnd) != 64 {
			t.Errorf("%s reports %+v, want its name, %s and %s", inst.Name, f, inst.IP, inst.MAC)
		}
		w.checkClock(t, inst)
		seen[inst.Name] = f
		// Its disk is a copy of the template's: an overlay of the image
		// alone, shipped by a move as a cold vm's is.
		if chain, err := jail.BackingChain(filepath.Join(w.l.Config().StateDir, "vms", inst.ID, "disk.qcow2")); err != nil || len(chain) != 1 || chain[0] != tpl.ImagePath {
			t.Errorf("%s's disk is backed by %v (%v), want the image %s alone", inst.Name, chain, err, tpl.ImagePath)
		}
		uid := procStatusUID(t, inst.PID)
		if uid == 0 || uids[uid] != "" {
			t.Errorf("%s's qemu runs as uid %d (%q runs as it too)", inst.Name, uid, uids[uid])
		}
		uids[uid] = inst.Name
		maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", inst.PID))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(maps), " "+memfd+" (deleted)") {
			t.Errorf("%s's qemu does not map %s", inst.Name, memfd)
		}
		if strings.Contains(string(maps), ram) {
			t.Errorf("%s's qemu maps the template's ram file %s", inst.Name, ram)
		}
		rss, pss := smapsOf(t, inst.PID, memfd)
		t.Logf("%s: uid %d, template memfd Rss %d KiB, Pss %d KiB", inst.Name, uid, rss, pss)
		if rss == 0 || pss >= rss {
			t.Errorf("%s shares no template pages with the other clone: Rss %d KiB, Pss %d KiB", inst.Name, rss, pss)
		}
	}
	if fa, fb := seen[a.Name], seen[b.Name]; fa.mid == fb.mid || fa.rnd == fb.rnd || fa.host == fb.host || fa.mac == fb.mac || fa.ip == fb.ip {
		t.Errorf("clones share identity: %+v and %+v", fa, fb)
	}
}

// smapsOf sums the Rss and Pss (KiB) of pid's mappings of path.
// templateMemfdName is the name of the sealed memfd of the template RAM
// file ram: its template's key and the file's version (device, inode,
// modification time), so that a driver takes up only a copy of the same
// version from running clones (qemu/template_memfd_linux.go).
func templateMemfdName(t *testing.T, ram string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(ram, &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("minions-template-%s-%x.%x.%x", filepath.Base(filepath.Dir(ram)), st.Dev, st.Ino, st.Mtim.Nano())
}

// dropNewTemplates registers the removal, when t ends, of the templates
// (and their disks) that are not there now, so that the other tests'
// creates stay cold; it returns the keys there now. Called before a
// daemon is started, the removal runs after the daemon stopped.
func dropNewTemplates(t *testing.T) map[string]bool {
	t.Helper()
	had := map[string]bool{}
	if ts, err := engine.ReadTemplates(stateDir); err == nil {
		for _, tp := range ts {
			had[tp.Key] = true
		}
	}
	t.Cleanup(func() {
		ts, _ := engine.ReadTemplates(stateDir)
		for _, tp := range ts {
			if !had[tp.Key] {
				os.RemoveAll(filepath.Join(stateDir, "templates", tp.Key))
				os.Remove(tp.Disk)
			}
		}
	})
	return had
}

func smapsOf(t *testing.T, pid int, path string) (rss, pss int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			in = len(f) >= 6 && f[5] == path
		case in && len(f) == 3 && f[0] == "Rss:":
			n, _ := strconv.ParseInt(f[1], 10, 64)
			rss += n
		case in && len(f) == 3 && f[0] == "Pss:":
			n, _ := strconv.ParseInt(f[1], 10, 64)
			pss += n
		}
	}
	return rss, pss
}

// TestServeWarmJailed is warm create as a user of the README gets it:
// `minions serve` with the default config (the per-VM jail on) builds the
// default image's template in the background, and `minions create` with
// no shape restores from it (boot warm) into a jailed VM that maps the
// template's RAM through the sealed memfd. The template it built is
// removed at the end, so that the other tests' creates stay cold.
func TestServeWarmJailed(t *testing.T) {
	setup(t)
	dir := t.TempDir()
	conf := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(conf, []byte("default_image = \"minimal\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	had := dropNewTemplates(t)
	d := startDaemon(t, dir, "", "--config", conf) // after noWarmConfig: this one counts
	t.Cleanup(func() { d.stop(t) })
	var tpl engine.Template
	deadline := time.Now().Add(4 * time.Minute)
	for tpl.Key == "" {
		ts, _ := engine.ReadTemplates(stateDir)
		for _, tp := range ts {
			// One the daemon built, or one there was (the daemon
			// then builds none).
			if strings.HasPrefix(tp.Image, "minimal@") && tp.CPUs == 1 && tp.MemoryMiB == 512 {
				tpl = tp
			}
		}
		if tpl.Key == "" {
			if time.Now().After(deadline) {
				t.Fatalf("no template of the default image and shape after 4 minutes; daemon log:\n%s", d.logs())
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	t.Logf("template %s of %s (1 vCPU, 512 MiB), built in %d ms (by this daemon: %v)", tpl.Key, tpl.Image, tpl.BuildMillis, !had[tpl.Key])
	var v struct {
		vmJSON
		Boot     string   `json:"boot"`
		Warnings []string `json:"warnings"`
	}
	mustJSON(t, &v, "create", "servewarm-a")
	defer minions(t, "", "destroy", "servewarm-a", "--yes")
	if v.Boot != "warm" {
		t.Fatalf("create: boot %q (warnings %v), want warm", v.Boot, v.Warnings)
	}
	if out := strings.TrimSpace(must(t, "exec", "servewarm-a", "--", "hostname")); out != "servewarm-a" {
		t.Errorf("hostname in the warm vm: %q", out)
	}
	if uid := procStatusUID(t, v.PID); uid == 0 {
		t.Errorf("the warm vm's qemu runs as root")
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", v.PID))
	if err != nil {
		t.Fatal(err)
	}
	ram := filepath.Join(stateDir, "templates", tpl.Key, qemu.TemplateMemoryFile)
	if !strings.Contains(string(maps), " /memfd:"+templateMemfdName(t, ram)+" (deleted)") {
		t.Errorf("the warm vm's qemu does not map the template's sealed memfd")
	}
}
