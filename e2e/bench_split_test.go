package e2e

// What BenchmarkBareBoot reads of a boot after QEMU was up: the create's
// MINIONS_TRACE marks, and the instant each side's agent relay logged the
// guest link up, which splits "QEMU up -> agent ready" into the guest's
// own boot (to the link) and the host's side after it (CONNECT, SSH
// handshake, ping).

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
)

// traceMarks is every MINIONS_TRACE line in a command's stderr, in order,
// as step samples: the wall time from exec, or with cpu the process's CPU
// time.
func traceMarks(stderr string, cpu bool) []stepTime {
	var out []stepTime
	for _, line := range strings.Split(stderr, "\n") {
		rest, found := strings.CutPrefix(line, "trace +")
		if !found {
			continue
		}
		var w, c float64
		if _, err := fmt.Sscanf(rest, "%fms cpu %fms:", &w, &c); err != nil {
			continue
		}
		_, what, ok := strings.Cut(rest, ": ")
		if !ok {
			continue
		}
		// "create NAME: step" differs per VM: keep the step.
		if strings.HasPrefix(what, "create ") {
			if _, step, ok := strings.Cut(what[len("create "):], ": "); ok {
				what = "create: " + step
			}
		}
		if cpu {
			w = c
		}
		out = append(out, stepTime{name: what, took: time.Duration(w * float64(time.Millisecond))})
	}
	return out
}

// traceMark finds the MINIONS_TRACE line "trace +W ms cpu C ms: what" in
// a command's stderr (starttrace's format): wall W and CPU C.
func traceMark(stderr, what string) (wall, cpu time.Duration, ok bool) {
	for _, line := range strings.Split(stderr, "\n") {
		rest, found := strings.CutPrefix(line, "trace +")
		if !found || !strings.HasSuffix(rest, ": "+what) {
			continue
		}
		var w, c float64
		if _, err := fmt.Sscanf(rest, "%fms cpu %fms:", &w, &c); err != nil {
			continue
		}
		return time.Duration(w * float64(time.Millisecond)), time.Duration(c * float64(time.Millisecond)), true
	}
	return 0, 0, false
}

// relayLinkUp is when the agent relay whose log is in runDir first logged
// the guest link up (its "time=" field, RFC 3339 with nanoseconds).
func relayLinkUp(runDir string) (time.Time, error) {
	f, err := os.Open(filepath.Join(runDir, "relay.log"))
	if err != nil {
		return time.Time{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "guest link up") {
			continue
		}
		ts, ok := strings.CutPrefix(line, "time=")
		if !ok {
			continue
		}
		ts, _, _ = strings.Cut(ts, " ")
		return time.Parse(time.RFC3339Nano, ts)
	}
	return time.Time{}, fmt.Errorf("no guest link up in %s", filepath.Join(runDir, "relay.log"))
}

// guestReadyUptime is the guest's own uptime when its agent began serving
// (the "uptime N ms" of the agent's ready line on the console log at
// path): the guest's boot by its own clock, whatever the host did.
func guestReadyUptime(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		_, rest, ok := strings.Cut(line, proto.ReadyMarker)
		if !ok {
			continue
		}
		_, rest, ok = strings.Cut(rest, "uptime ")
		if !ok {
			continue
		}
		var n int64
		if _, err := fmt.Sscanf(rest, "%d ms", &n); err == nil {
			return time.Duration(n) * time.Millisecond, nil
		}
	}
	return 0, fmt.Errorf("no agent ready line with an uptime in %s", path)
}

// afterUp splits one boot after QEMU was up (pidfile) at the instant its
// relay had the guest link: up -> link is the guest's boot to its agent's
// answer, link -> ready the host's connection, handshake and ping.
type afterUp struct {
	upToReady, upToLink, linkToReady time.Duration
	guest                            time.Duration // guestReadyUptime; 0: unknown
}

func splitAfterUp(up, link, ready time.Time) afterUp {
	return afterUp{upToReady: ready.Sub(up), upToLink: link.Sub(up), linkToReady: ready.Sub(link)}
}

// afterUpSamples gathers afterUp splits of the bare and created halves of
// each pair, and their pairwise differences.
type afterUpSamples struct {
	bare, create, diff struct{ upToReady, upToLink, linkToReady, guest samples }
}

func (s *afterUpSamples) add(bare, create afterUp) {
	s.bare.upToReady = append(s.bare.upToReady, bare.upToReady)
	s.bare.upToLink = append(s.bare.upToLink, bare.upToLink)
	s.bare.linkToReady = append(s.bare.linkToReady, bare.linkToReady)
	s.create.upToReady = append(s.create.upToReady, create.upToReady)
	s.create.upToLink = append(s.create.upToLink, create.upToLink)
	s.create.linkToReady = append(s.create.linkToReady, create.linkToReady)
	s.diff.upToReady = append(s.diff.upToReady, create.upToReady-bare.upToReady)
	s.diff.upToLink = append(s.diff.upToLink, create.upToLink-bare.upToLink)
	s.diff.linkToReady = append(s.diff.linkToReady, create.linkToReady-bare.linkToReady)
	if bare.guest > 0 && create.guest > 0 {
		s.bare.guest = append(s.bare.guest, bare.guest)
		s.create.guest = append(s.create.guest, create.guest)
		s.diff.guest = append(s.diff.guest, create.guest-bare.guest)
	}
}

// addTo prints the split as rows of t.
func (s *afterUpSamples) addTo(t *table) {
	t.addSamples("qemu up -> agent ready: bare (first ping)", s.bare.upToReady)
	t.addSamples("  bare: qemu up -> guest link up (relay log)", s.bare.upToLink)
	t.addSamples("  bare: guest link up -> first ping", s.bare.linkToReady)
	t.addSamples("qemu up -> agent ready: create (its mark)", s.create.upToReady)
	t.addSamples("  create: qemu up -> guest link up (relay log)", s.create.upToLink)
	t.addSamples("  create: guest link up -> agent ready", s.create.linkToReady)
	t.addSamples("pairwise create - bare: qemu up -> agent ready", s.diff.upToReady)
	t.addSamples("  of which qemu up -> guest link up (guest boot)", s.diff.upToLink)
	t.addSamples("  of which guest link up -> ready (host side)", s.diff.linkToReady)
	t.addSamples("guest uptime at agent start (guest clock): bare", s.bare.guest)
	t.addSamples("  create", s.create.guest)
	t.addSamples("  pairwise create - bare", s.diff.guest)
}

func TestRelayLinkUp(t *testing.T) {
	dir := t.TempDir()
	log := `time=2026-12-06T12:00:00.100000000Z level=INFO msg="relay started" component=relay
time=2026-12-06T12:00:01.234567891Z level=INFO msg="guest link up" component=relay handshake_ms=1100
time=2026-12-06T12:00:09Z level=INFO msg="guest link up" component=relay handshake_ms=3
`
	if err := os.WriteFile(filepath.Join(dir, "relay.log"), []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := relayLinkUp(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 12, 6, 12, 0, 1, 234567891, time.UTC); !got.Equal(want) {
		t.Fatalf("relayLinkUp = %s, want %s", got, want)
	}
	if _, err := relayLinkUp(t.TempDir()); err == nil {
		t.Fatal("relayLinkUp of a dir without relay.log: no error")
	}
}

func TestGuestReadyUptime(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	con := "[    1.2] random: crng init done\r\n" + proto.ReadyMarker + " (agent 40 ms, userspace 90 ms, modules 80 ms, uptime 1534 ms)\r\n"
	if err := os.WriteFile(p, []byte(con), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := guestReadyUptime(p)
	if err != nil || got != 1534*time.Millisecond {
		t.Fatalf("guestReadyUptime = %v, %v; want 1.534s", got, err)
	}
}
