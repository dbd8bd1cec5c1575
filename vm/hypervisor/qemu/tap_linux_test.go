package qemu

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// A TAP whose single queue is still held by someone else (a child forked
// while the daemon had it open, until that child execs) is attached once
// it is free, not refused with EBUSY.
func TestOpenTAPWaitsForABusyQueue(t *testing.T) {
	if os.Getenv(envNetns) != "1" {
		t.Skip("needs the test network namespace (root)")
	}
	const name = "mnbusytest0"
	if out, err := exec.Command("ip", "tuntap", "add", "dev", name, "mode", "tap").CombinedOutput(); err != nil {
		t.Fatalf("ip tuntap add: %v %s", err, out)
	}
	defer exec.Command("ip", "link", "del", name).Run()
	holder, err := attachTAP(name)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		holder.Close()
	}()
	start := time.Now()
	f, err := openTAP(name)
	if err != nil {
		t.Fatalf("openTAP while the queue is held for 300 ms: %v", err)
	}
	f.Close()
	if took := time.Since(start); took < 250*time.Millisecond {
		t.Fatalf("attached after %s while another fd held the queue", took)
	}
}
