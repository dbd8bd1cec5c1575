package local

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestMemoryDirPerInstallation: installations with different state
// directories never share a RAM file directory; one installation always
// gets the same one.
func TestMemoryDirPerInstallation(t *testing.T) {
	a, b := MemoryDir("/var/lib/minions"), MemoryDir("/tmp/n1/s")
	if a == b {
		t.Fatalf("two installations share %s", a)
	}
	if MemoryDir("/var/lib/minions") != a || filepath.Dir(a) != "/dev/shm/minions" || !strings.HasPrefix(b, "/dev/shm/minions/") {
		t.Fatalf("memory dirs %s, %s", a, b)
	}
}
