package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// written lives in the binary's writable data: dropText must leave it be.
var written = [4]int{1, 2, 3, 4}

func rssFileKiB(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		t.Skip("no smaps_rollup")
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Pss_File:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	t.Skip("no Pss_File")
	return 0
}

// TestDropText: the executable's resident read-only pages go (the test
// binary is a static Go executable too) and written data stays.
func TestDropText(t *testing.T) {
	written[2] = 42
	before := rssFileKiB(t)
	n := dropText()
	after := rssFileKiB(t)
	t.Logf("advised %d KiB; file PSS %d -> %d KiB", n>>10, before, after)
	if n == 0 || after >= before {
		t.Fatalf("dropText advised %d bytes; file PSS %d -> %d KiB", n, before, after)
	}
	if written != [4]int{1, 2, 42, 4} {
		t.Fatalf("data changed: %v", written)
	}
}
