package proxytest

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// StartChild starts cmd, a process a benchmark measures apart from
// itself (a proxy, a relay), reads the first line it prints (its
// address and whatever else it announces) and returns it without the
// newline; the rest of its output is discarded, its errors go to this
// process's. It runs until until ends (until may be tb or a parent
// benchmark): then its standard input closes, which ends it, and it is
// waited for.
func StartChild(tb, until testing.TB, cmd *exec.Cmd) string {
	tb.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	until.Cleanup(func() { stdin.Close(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		tb.Fatalf("%s: %v", cmd.Path, err)
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return strings.TrimSpace(line)
}
