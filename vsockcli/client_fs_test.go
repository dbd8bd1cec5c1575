package vsockcli

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/guestagent"
)

// Filesystem calls on real loop-mounted ext4: freeze/thaw, grow.

// loopFS creates an ext4 filesystem of sizeMiB on a loop device mounted in
// a temporary directory, and returns its mount and backing file.
func loopFS(t *testing.T, sizeMiB int) (guestagent.Mount, string) {
	t.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("no losetup")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	mnt := filepath.Join(dir, "mnt")
	os.Mkdir(mnt, 0o755)
	sh := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	sh("truncate", "-s", fmt.Sprintf("%dM", sizeMiB), img)
	sh("mkfs.ext4", "-q", img)
	dev := sh("losetup", "--find", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	sh("mount", dev, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	return guestagent.Mount{Source: dev, Target: mnt, FSType: "ext4"}, img
}

func TestFreezeThaw(t *testing.T) {
	ctx := testCtx(t)
	m, _ := loopFS(t, 32)
	e := newEnv(t, envOpts{mounts: []guestagent.Mount{m}})
	c := e.client(ctx)

	// writeBlocks reports whether a synced write to the filesystem is held
	// up (as it is while frozen) for at least 300 ms.
	writeDone := func() <-chan struct{} {
		done := make(chan struct{})
		go func() {
			defer close(done)
			f, err := os.Create(filepath.Join(m.Target, fmt.Sprint(time.Now().UnixNano())))
			if err == nil {
				f.WriteString("x")
				f.Sync()
				f.Close()
			}
		}()
		return done
	}
	frozen, err := c.FSFreeze(ctx)
	if err != nil || len(frozen) != 1 || frozen[0] != m.Target {
		t.Fatalf("freeze: %v %v", frozen, err)
	}
	if again, err := c.FSFreeze(ctx); err != nil || len(again) != 1 {
		t.Fatalf("second freeze is not idempotent: %v %v", again, err)
	}
	done := writeDone()
	select {
	case <-done:
		t.Fatal("write completed on a frozen filesystem")
	case <-time.After(300 * time.Millisecond):
	}
	if err := c.FSThaw(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("write still blocked after thaw")
	}
	if err := c.FSThaw(ctx); err != nil {
		t.Fatalf("thaw is not idempotent: %v", err)
	}

	// Auto-thaw when the freezing connection goes away.
	c2, err := Dial(ctx, e.ep, e.config())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c2.FSFreeze(ctx); err != nil {
		t.Fatal(err)
	}
	done = writeDone()
	c2.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("not thawed after the freezing connection closed")
	}

	// Auto-thaw after the timeout (2 s in this test).
	if _, err := c.FSFreeze(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	<-writeDone()
	if d := time.Since(start); d < time.Second || d > 10*time.Second {
		t.Fatalf("auto-thaw after %v, want about 2 s", d)
	}
}

func TestGrowFS(t *testing.T) {
	ctx := testCtx(t)
	if !hasCap(24) { // CAP_SYS_RESOURCE; TestQEMUAgent covers growfs in a VM
		t.Skip("EXT4_IOC_RESIZE_FS needs CAP_SYS_RESOURCE")
	}
	m, img := loopFS(t, 32)
	e := newEnv(t, envOpts{growMount: m.Target})
	c := e.client(ctx)
	before, err := c.GrowFS(ctx) // already full size: a no-op
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 96<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("losetup", "-c", m.Source).CombinedOutput(); err != nil {
		t.Fatalf("losetup -c: %v %s", err, out)
	}
	after, err := c.GrowFS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after < before+60<<20 {
		t.Fatalf("size %d -> %d, want about +64 MiB", before, after)
	}
}

// hasCap reports whether the process has capability bit n in effect.
func hasCap(n uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			fmt.Sscanf(strings.TrimSpace(v), "%x", &caps)
			return caps&(1<<n) != 0
		}
	}
	return false
}
