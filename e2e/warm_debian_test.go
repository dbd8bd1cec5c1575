package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/engine"
)

// TestWarmDebian is issue 16's re-identification proof on the full
// Debian image (systemd, journald, sshd), which TestWarmCreate's minimal
// image has not got: two VMs warm-created from one template differ in IP,
// MAC, hostname, machine-id, sshd host keys and urandom, their clocks are
// set, the template's leases and random seed are gone, and journald, which
// re-identification stops and restarts once the guest is quiet, runs again
// under each VM's own machine-id (its journal directory is the only one)
// and kept what was logged while it was stopped (the agent's
// "re-identified" line).
func TestWarmDebian(t *testing.T) {
	needVMs(t)
	if os.Getenv("MINIONS_E2E_DEBIAN") == "0" {
		t.Skip("MINIONS_E2E_DEBIAN=0: no Debian image")
	}
	w := newWarmEngine(t, "mnwarm54", "10.254.0.0/24")
	ctx := context.Background()
	tpl, err := w.l.WarmTemplate(ctx, "debian", 1, 512, 0, nil)
	if err != nil {
		t.Fatalf("warm template: %v", err)
	}
	t.Logf("template %s of %s built in %d ms", tpl.Key, tpl.Image, tpl.BuildMillis)
	a := w.createImage(t, "deb-a", "debian", 512, false)
	b := w.createImage(t, "deb-b", "debian", 512, false)
	type ident struct{ host, mid, sshKey, rnd, ip, mac string }
	idents := map[string]ident{}
	for _, inst := range []engine.Instance{a, b} {
		if inst.Boot != engine.BootWarm {
			t.Fatalf("%s: Boot = %q, want warm (warnings %v)", inst.Name, inst.Boot, inst.Warnings)
		}
		id := ident{
			host:   w.run(t, inst, "hostname"),
			mid:    w.run(t, inst, "cat /etc/machine-id"),
			sshKey: w.run(t, inst, "cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub"),
			rnd:    w.run(t, inst, "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"),
			ip:     w.run(t, inst, "ip -4 -o addr show dev eth0"),
			mac:    w.run(t, inst, "cat /sys/class/net/eth0/address"),
		}
		if id.host != inst.Name || !strings.Contains(id.ip, " "+inst.IP+"/") || id.mac != inst.MAC || len(id.rnd) != 64 || id.sshKey == "" {
			t.Errorf("%s: identity %+v, want hostname %s, ip %s, mac %s", inst.Name, id, inst.Name, inst.IP, inst.MAC)
		}
		w.checkClock(t, inst)
		idents[inst.Name] = id
		if got := w.run(t, inst, "ls /var/lib/systemd/random-seed /var/lib/dhcp/*.leases /var/lib/systemd/credential.secret 2>/dev/null; true"); got != "" {
			t.Errorf("%s: template leftovers: %q", inst.Name, got)
		}
		// journald: restarted (not stopped) under the VM's machine-id,
		// with the agent's line logged while it was stopped.
		var state string
		for deadline := time.Now().Add(2 * time.Minute); ; {
			state = w.run(t, inst, "ls /run/log/journal /var/log/journal 2>/dev/null | grep -E '^[0-9a-f]{32}$' | sort -u | tr '\\n' ' '; "+
				"echo; ps -o stat= -C systemd-journal; systemctl is-active systemd-journald; "+
				"journalctl -q -b -u minions-agent --no-pager | grep -c 're-identified'; true")
			lines := strings.Split(state, "\n")
			if len(lines) >= 4 && strings.TrimSpace(lines[0]) == id.mid && !strings.HasPrefix(strings.TrimSpace(lines[1]), "T") &&
				lines[2] == "active" && strings.TrimSpace(lines[3]) != "0" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: journal dirs, journald state, is-active, agent lines = %q; want only %s, running, active, >= 1",
					inst.Name, state, id.mid)
				break
			}
			time.Sleep(2 * time.Second)
		}
		t.Logf("%s: journal %q", inst.Name, state)
	}
	ia, ib := idents[a.Name], idents[b.Name]
	if ia.mid == ib.mid || ia.sshKey == ib.sshKey || ia.rnd == ib.rnd || ia.host == ib.host || ia.ip == ib.ip || ia.mac == ib.mac {
		t.Errorf("clones share identity: %+v and %+v", ia, ib)
	}
}
