package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkWarmSSH times what a user waits for: `minions create NAME
// --image debian` (exec to exit) and then a real OpenSSH `ssh NAME@host
// true` through the daemon's SSH gateway, repeated until it succeeds; warm
// (restored from the image's template) and cold (--cold), pairwise, on the
// shared installation with a daemon on the default config (the jail on;
// MINIONS_E2E_WARMSSH_JAIL=off turns it off, as these figures were taken
// before templates worked under it). The template is built by the daemon in the
// background after the first cold create of the shape. It also checks that
// a warm clone's sshd is listening the moment create returns (the template
// was saved after the guest's boot was over). MINIONS_E2E_WARM_IMAGE picks
// another image (default debian, which needs MINIONS_E2E_DEBIAN unset);
// MINIONS_E2E_WARMSSH_COLD=0 skips the cold samples.
//
// The table splits the warm ssh into steps: the OpenSSH client's (from
// its -v log: connect, key exchange, authentication, session channel,
// exit status) and the gateway's (its "vm session ended" log line: login,
// agent connection, agent channel, exec start, run, close), for the first
// ssh after create and for a second one right after it.
//
// The e2e package runs in a network namespace of its own; the shared
// installation's subnet is private to it (this benchmark's reserved
// subnet, 10.220.0.0/16, is not needed).
func BenchmarkWarmSSH(b *testing.B) {
	benchSetup(b)
	image := cmp.Or(os.Getenv("MINIONS_E2E_WARM_IMAGE"), "debian")
	if image == "debian" && os.Getenv("MINIONS_E2E_DEBIAN") == "0" {
		b.Skip("MINIONS_E2E_DEBIAN=0: no Debian image")
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		b.Skip("ssh is not installed")
	}
	dir := b.TempDir()
	conf := filepath.Join(dir, "config.toml")
	jailConf := ""
	if os.Getenv("MINIONS_E2E_WARMSSH_JAIL") == "off" {
		jailConf = "jail = \"off\"\n"
	}
	if err := os.WriteFile(conf, []byte(jailConf), 0o644); err != nil {
		b.Fatal(err)
	}
	d := startDaemon(b, dir, "", "--config", conf)
	b.Cleanup(func() { d.stop(b) })
	key := newSSHKey(b, dir, "warmssh")
	cliMust(b, "ssh-key", "add", key.pubFile)

	type run struct {
		create, ssh, total time.Duration
		client, again      sshTimeline // of the ssh that succeeded, and of one more
	}
	// oneTry creates a VM (cold or warm), sshes into it until `true`
	// succeeds, checks its boot path, and destroys it. A create that
	// fails is fatal unless mayFail (then its boot is "failed").
	var oneTry func(name string, cold, mayFail bool) (run, string)
	oneTry = func(name string, cold, mayFail bool) (run, string) {
		args := []string{"create", name, "--image", image, "--json"}
		if cold {
			args = append(args, "--cold")
		}
		start := time.Now()
		r := cli(b, "", args...)
		created := time.Since(start)
		if r.code != 0 && mayFail {
			b.Logf("create %s failed (a loaded host may not cold-boot Debian within the ready timeout): %s", name, r)
			cli(b, "", "destroy", name, "--yes")
			return run{}, "failed"
		}
		if r.code != 0 {
			b.Fatalf("create %s: %s", name, r)
		}
		var boot string
		if i := strings.Index(r.stdout, `"boot": "`); i >= 0 {
			boot, _, _ = strings.Cut(r.stdout[i+len(`"boot": "`):], `"`)
		}
		var last sshRun
		var tl sshTimeline
		tries := 0
		for deadline := time.Now().Add(3 * time.Minute); ; tries++ {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			var res sshRun
			var err error
			res, tl, err = runTimedSSH(d.opensshCmd(ctx, key, "ssh", "-v", name+"@127.0.0.1", "true"))
			cancel()
			if err != nil {
				b.Fatal(err)
			}
			if res.code == 0 {
				break
			}
			last = res
			if time.Now().After(deadline) {
				b.Fatalf("ssh %s true never succeeded: %s", name, last)
			}
			time.Sleep(20 * time.Millisecond)
		}
		total := time.Since(start)
		var again sshTimeline
		if !cold {
			// A second `ssh true` right after: what the first one
			// pays on top of steady state.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			res, tl, err := runTimedSSH(d.opensshCmd(ctx, key, "ssh", "-v", name+"@127.0.0.1", "true"))
			cancel()
			if err != nil || res.code != 0 {
				b.Fatalf("second ssh %s true: %v %s", name, err, res)
			}
			again = tl
			if name == "wssh-0-false" || name == "wssh-1-false" {
				// What the guest spent its CPU on since create: the
				// processes by CPU ticks (10 ms), with their start
				// (ticks since boot) against the uptime now; what
				// systemd did since the restore (the journal, with
				// monotonic times), its queued jobs and timers.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				res, _ := runClient(d.opensshCmd(ctx, key, "ssh", name+"@127.0.0.1",
					`awk '{print $14+$15, $22, $2, $1}' /proc/[0-9]*/stat 2>/dev/null | sort -rn | head -25; `+
						`echo uptime $(cat /proc/uptime); systemctl list-jobs --no-pager 2>&1 | head; `+
						`journalctl -o short-monotonic --no-pager 2>&1 | tail -30; `+
						`systemctl list-timers --all --no-pager 2>&1 | head -12`), "")
				cancel()
				b.Logf("%s after the first ssh (exit %d): cpu_ticks start_ticks comm pid\n%s%s", name, res.code, res.stdout, res.stderr)
			}
		}
		if !cold && boot == "warm" {
			// The template was saved with the boot over: sshd
			// listens in the clone at once, and serves the clone's
			// new host key (no reload: OpenSSH 9.2 reads its keys
			// per connection).
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			res, _ := runClient(d.opensshCmd(ctx, key, "ssh", name+"@127.0.0.1",
				"PATH=$PATH:/usr/sbin; if command -v sshd >/dev/null; then "+
					"ss -ltnH 'sport = :22' | grep -q . || { echo sshd not listening; exit 1; }; "+
					"if command -v ssh-keyscan >/dev/null; then k=$(ssh-keyscan -T 30 -t ed25519 127.0.0.1 2>/dev/null | cut -d' ' -f3); "+
					"grep -q \"$k\" /etc/ssh/ssh_host_ed25519_key.pub && [ -n \"$k\" ] || { echo sshd serves another host key: $k; exit 1; }; fi; fi"), "")
			cancel()
			if res.code != 0 {
				b.Errorf("%s (warm): %s", name, res)
			}
		}
		if tries > 0 {
			b.Logf("%s: ssh succeeded after %d failed tries (last: %s)", name, tries, strings.TrimSpace(last.stderr))
		}
		destroyVM(b, name)
		return run{create: created, ssh: total - created, total: total, client: tl, again: again}, boot
	}

	one := func(name string, cold bool) (run, string) { return oneTry(name, cold, false) }

	// A cold create of the shape makes the daemon build its template in
	// the background; wait for it (a build that failed, say its boot
	// timed out on a loaded host, is tried again by the next cold create).
	attempt := 0
	var deadline time.Time
	for {
		if time.Now().After(deadline) {
			if attempt == 3 {
				b.Fatalf("no template of %s after 3 builds:\n%s", image, d.logs())
			}
			_, boot := oneTry(fmt.Sprintf("wssh-first-%d", attempt), false, true)
			if boot != "cold" {
				b.Logf("first create of %s was %q", image, boot)
			}
			attempt++
			deadline = time.Now().Add(5 * time.Minute)
			if boot == "failed" {
				deadline = time.Time{} // no template build started: try again now
				continue
			}
		}
		// The daemon also builds the default image's template.
		ms, _ := filepath.Glob(filepath.Join(stateDir, "templates", "*", "manifest.json"))
		found := false
		for _, m := range ms {
			var t struct {
				Image string `json:"image"`
			}
			if b, err := os.ReadFile(m); err == nil && json.Unmarshal(b, &t) == nil && strings.HasPrefix(t.Image, image+"@") {
				found = true
			}
		}
		if found {
			break
		}
		if strings.Contains(d.logs(), "background template build failed") && attempt < 3 {
			deadline = time.Time{} // try again now
			d.logMu.Lock()
			d.log.Reset()
			d.logMu.Unlock()
		}
		time.Sleep(500 * time.Millisecond)
	}

	// MINIONS_E2E_WARMSSH_COLD=0 measures the warm path only (a loaded
	// host may not cold-boot Debian within the ready timeout).
	paths := []bool{false, true}
	if os.Getenv("MINIONS_E2E_WARMSSH_COLD") == "0" {
		paths = paths[:1]
	}
	var warm, cold [3]samples
	warmClient := make([]samples, len(sshMilestones))
	warmAgain := make([]samples, len(sshMilestones))
	i := 0
	for b.Loop() {
		for _, c := range paths {
			r, boot := one(fmt.Sprintf("wssh-%d-%v", i, c), c)
			if want := map[bool]string{false: "warm", true: "cold"}[c]; boot != want {
				b.Fatalf("create boot %q, want %q:\n%s", boot, want, d.logs())
			}
			s := &warm
			if c {
				s = &cold
			}
			s[0] = append(s[0], r.create)
			s[1] = append(s[1], r.ssh)
			s[2] = append(s[2], r.total)
			if !c {
				for j, d := range r.client.steps() {
					warmClient[j] = append(warmClient[j], d)
				}
				for j, d := range r.again.steps() {
					warmAgain[j] = append(warmAgain[j], d)
				}
			}
		}
		i++
	}
	warm[2].report(b, "warm-")
	cold[2].report(b, "cold-")
	t := &table{title: fmt.Sprintf("BenchmarkWarmSSH: minions create --image %s, then ssh VM@host true until it succeeds", image), head: sampleHead("path")}
	for _, x := range []struct {
		name string
		s    *[3]samples
	}{{"warm", &warm}, {"cold", &cold}} {
		t.addSamples(x.name+": create (exec to exit)", x.s[0])
		t.addSamples(x.name+": then ssh true", x.s[1])
		t.addSamples(x.name+": create -> ssh true", x.s[2])
	}
	for j, m := range sshMilestones {
		t.addSamples("warm ssh (client): "+m.label, warmClient[j])
	}
	for j, m := range sshMilestones {
		t.addSamples("warm, 2nd ssh (client): "+m.label, warmAgain[j])
	}
	for _, st := range warmCreateSteps(d.logs(), "wssh-", "-false") {
		t.addSamples("warm create ("+st.name+")", st.s)
	}
	for _, st := range gatewaySteps(d.logs(), "wssh-", "-false", 0) {
		t.addSamples("warm ssh (gateway): "+st.name, st.s)
	}
	for _, st := range gatewaySteps(d.logs(), "wssh-", "-false", 1) {
		t.addSamples("warm, 2nd ssh (gateway): "+st.name, st.s)
	}
	t.print()
	// The profile of the warm path, from the daemon's log: the engine's
	// ready time and the guest's re-identification steps.
	d.logMu.Lock()
	for _, line := range strings.Split(d.log.String(), "\n") {
		if strings.Contains(line, "guest re-identified") || strings.Contains(line, "vm ready (warm)") || strings.Contains(line, "template guest settled") || strings.Contains(line, "template guest quiet") {
			fmt.Fprintln(os.Stderr, line)
		}
	}
	d.logMu.Unlock()
}
