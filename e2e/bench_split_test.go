package e2e

// What BenchmarkBareBoot reads of a boot after QEMU was up: the create's
// MINIONS_TRACE marks, and the instant each side's agent relay logged the
// guest link up, which splits "QEMU up -> agent ready" into the guest's
// own boot (to the link) and the host's side after it (CONNECT, SSH
// handshake, ping).

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
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
	bare, create, diff struct{ upToReady, upToLink, linkToReady, guest, gap samples }
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
		// What of qemu up -> link up the guest's clock does not see:
		// QEMU's start-up before the guest runs, and the channel from
		// the agent opening its port to the relay's link.
		bg, cg := bare.upToLink-bare.guest, create.upToLink-create.guest
		s.bare.gap = append(s.bare.gap, bg)
		s.create.gap = append(s.create.gap, cg)
		s.diff.gap = append(s.diff.gap, cg-bg)
	}
}

// table renders the split, with a distribution-free 95% confidence
// interval of each median: a pairwise row whose interval holds 0 does not
// show a systematic difference at this many pairs.
func (s *afterUpSamples) table() *table {
	t := &table{title: "BenchmarkBareBoot: qemu up -> agent ready, bare against create, split at the relay's guest link up",
		head: []string{"measure", "n", "median ms", "95% CI of median", "p90 ms", "min ms", "max ms"}}
	row := func(label string, v samples) {
		if len(v) == 0 {
			t.add(label, "0", "-", "-", "-", "-", "-")
			return
		}
		ci := "-"
		if lo, hi, ok := v.medianCI(); ok {
			ci = "[" + fmtMS(lo) + ", " + fmtMS(hi) + "]"
		}
		t.add(label, strconv.Itoa(len(v)), fmtMS(v.median()), ci, fmtMS(v.p90()), fmtMS(v.min()), fmtMS(v.max()))
	}
	row("bare: qemu up -> first ping", s.bare.upToReady)
	row("  qemu up -> guest link up (relay log)", s.bare.upToLink)
	row("  guest link up -> first ping", s.bare.linkToReady)
	row("  guest's uptime at agent start (its clock)", s.bare.guest)
	row("  up -> link minus guest uptime (qemu start-up + channel)", s.bare.gap)
	row("create: qemu up -> agent ready (its mark)", s.create.upToReady)
	row("  qemu up -> guest link up (relay log)", s.create.upToLink)
	row("  guest link up -> agent ready", s.create.linkToReady)
	row("  guest's uptime at agent start (its clock)", s.create.guest)
	row("  up -> link minus guest uptime (qemu start-up + channel)", s.create.gap)
	row("pairwise create - bare: qemu up -> agent ready", s.diff.upToReady)
	row("  qemu up -> guest link up (the guest's boot)", s.diff.upToLink)
	row("  guest link up -> ready (the host's side)", s.diff.linkToReady)
	row("  guest's uptime at agent start", s.diff.guest)
	row("  up -> link minus guest uptime", s.diff.gap)
	return t
}

// medianCI is a distribution-free 95% confidence interval of the median
// of s (order statistics k and n+1-k, k the largest with
// P(Binomial(n, 1/2) < k) <= 2.5%); ok is false below 6 samples.
func (s samples) medianCI() (lo, hi time.Duration, ok bool) {
	n := len(s)
	if n < 6 {
		return 0, 0, false
	}
	// cdf(k) = P(X <= k) for X ~ Binomial(n, 1/2).
	cdf := func(k int) float64 {
		sum, c := 0.0, 1.0 // c = C(n, i)
		for i := 0; i <= k; i++ {
			if i > 0 {
				c = c * float64(n-i+1) / float64(i)
			}
			sum += c
		}
		return sum / math.Pow(2, float64(n))
	}
	k := 1
	for cdf(k) <= 0.025 { // P(X < k+1) <= 2.5%: k+1 will do
		k++
	}
	v := slices.Clone(s)
	slices.Sort(v)
	return v[k-1], v[n-k], true
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

func TestMedianCI(t *testing.T) {
	var s samples
	for i := 15; i >= 1; i-- {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	// n = 15: P(X <= 3) = 1.76%, P(X <= 4) = 5.9%: the 4th and 12th.
	lo, hi, ok := s.medianCI()
	if !ok || lo != 4*time.Millisecond || hi != 12*time.Millisecond {
		t.Fatalf("medianCI of 1..15 ms = %v, %v, %v; want 4ms, 12ms", lo, hi, ok)
	}
	// n = 6: P(X <= 0) = 1.6%, P(X <= 1) = 10.9%: min and max.
	lo, hi, ok = s[:6].medianCI()
	if !ok || lo != 10*time.Millisecond || hi != 15*time.Millisecond {
		t.Fatalf("medianCI of 6 samples = %v, %v, %v; want 10ms, 15ms", lo, hi, ok)
	}
	if _, _, ok := s[:5].medianCI(); ok {
		t.Fatal("medianCI of 5 samples: ok")
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
