package guestagent

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseProcStat(t *testing.T) {
	for _, c := range []struct {
		in           string
		busy, iowait uint64
		ok           bool
	}{
		// user nice system idle iowait irq softirq steal guest guest_nice
		{"cpu  10 2 30 400 50 6 7 8 90 100\ncpu0 1 1 1 1 1 1 1 1 1 1\n", 10 + 2 + 30 + 6 + 7 + 8, 50, true},
		{"cpu 1 2 3 4 5\n", 0, 0, false},
		{"cpu0 1 2 3 4 5 6 7\n", 0, 0, false},
		{"cpu 1 2 x 4 5 6 7\n", 0, 0, false},
		{"cpu 1 2 3 4 5 6 7\n", 1 + 2 + 3 + 6 + 7, 5, true},
		{"", 0, 0, false},
	} {
		busy, _, iowait, ok := parseProcStat([]byte(c.in))
		if busy != c.busy || iowait != c.iowait || ok != c.ok {
			t.Errorf("%q: busy %d iowait %d ok %v, want %d %d %v", c.in, busy, iowait, ok, c.busy, c.iowait, c.ok)
		}
	}
}

// TestCPUSince: the agent's own CPU and the guest's busy time between two
// samples, from a /proc/stat whose figures move on between them.
func TestCPUSince(t *testing.T) {
	stat := filepath.Join(t.TempDir(), "stat")
	if err := os.WriteFile(stat, []byte("cpu  100 0 50 1000 10 0 0 0 0 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := sampleCPU(stat)
	if !s.statTicksRead {
		t.Fatal("stat not read")
	}
	// The agent's own CPU: spin until 30 ms of it are spent (however
	// long the loaded host takes to give them).
	for deadline := time.Now().Add(10 * time.Second); sampleCPU(stat).agent-s.agent < 30*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Fatal("30 ms of CPU not seen in 10 s of spinning")
		}
	}
	if err := os.WriteFile(stat, []byte("cpu  130 0 60 1010 25 0 0 0 0 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := s.cpuSince(stat)
	if c.BusyMillis != 400 || c.IOWaitMillis != 150 {
		t.Errorf("busy %d ms, iowait %d ms, want 400 and 150", c.BusyMillis, c.IOWaitMillis)
	}
	if c.AgentMillis < 30 || c.WallMillis < c.AgentMillis-5 {
		t.Errorf("agent %d ms of CPU in %d ms, want >= 30 in at least as long", c.AgentMillis, c.WallMillis)
	}
	if err := os.Remove(stat); err != nil {
		t.Fatal(err)
	}
	if c := s.cpuSince(stat); c.BusyMillis != 0 || c.IOWaitMillis != 0 {
		t.Errorf("unreadable stat: busy %d iowait %d, want 0", c.BusyMillis, c.IOWaitMillis)
	}
}
