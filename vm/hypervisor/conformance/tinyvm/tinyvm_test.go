package tinyvm

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestInitramfsListsWithCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	path, err := Initramfs(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = f
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	listing := string(out)
	for _, want := range []string{"crw------- ", " 5,   1 ", "dev/console", "-rwxr-xr-x ", " init"} {
		if !strings.Contains(listing, want) {
			t.Errorf("listing lacks %q:\n%s", want, listing)
		}
	}
}

func TestLastTickAndCount(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	log := "boot\n" + ReadyMarker + "\n" + TickPrefix + "0\n" + TickPrefix + "7\n" + ReadyMarker + "\r\n" + TickPrefix + "2\r\n"
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := Count(p, ReadyMarker); got != 2 {
		t.Errorf("Count = %d", got)
	}
	if got := LastTick(p); got != 2 {
		t.Errorf("LastTick = %d, want 2 (after the last marker)", got)
	}
	if got := LastTick(filepath.Join(t.TempDir(), "none")); got != -1 {
		t.Errorf("LastTick(missing) = %d", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := WaitFor(ctx, p, ReadyMarker, 3); err == nil {
		t.Error("WaitFor a third marker succeeded")
	}
}
