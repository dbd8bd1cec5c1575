package images

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestAgentSumCached: the agent binary's SHA-256 (an input of the
// initramfs name, asked for on every create and boot) is read and hashed
// once per binary: later calls, in this process or a new one, stat it and
// take the kept sum; a new binary (other contents, same size) is hashed
// again, and a corrupt cache is ignored.
func TestAgentSumCached(t *testing.T) {
	dir, bin := t.TempDir(), filepath.Join(t.TempDir(), "minions-agent")
	write := func(s string, at time.Time) string {
		if err := os.WriteFile(bin, []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(bin, at, at)
		sum := sha256.Sum256([]byte(s))
		return hex.EncodeToString(sum[:])
	}
	check := func(want string, hashes int64) {
		t.Helper()
		got, err := agentSum(dir, bin)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("sum %s, want %s", got, want)
		}
		if n := agentHashes.Load(); n != hashes {
			t.Fatalf("hashed %d times, want %d", n, hashes)
		}
	}
	agentHashes.Store(0)
	now := time.Now()
	s1 := write("agent one", now)
	check(s1, 1)
	check(s1, 1)
	forgetAgentSums() // a new process: the file in dir remains
	check(s1, 1)

	s2 := write("agent two", now.Add(time.Second)) // same size
	check(s2, 2)
	check(s2, 2)

	if err := os.WriteFile(filepath.Join(dir, agentSumFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	forgetAgentSums()
	check(s2, 3)

	if _, err := agentSum(dir, filepath.Join(dir, "missing")); !os.IsNotExist(err) {
		t.Fatalf("missing agent: %v, want not exist", err)
	}
}
