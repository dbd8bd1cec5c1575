package cloudhypervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/conformance"
	"github.com/minionsdev/minions/vm/hypervisor/conformance/tinyvm"
	"github.com/minionsdev/minions/vm/hypervisor/kvm"
)

const envInNetns = "MINIONS_CH_TEST_NETNS"

// TestConformanceCloudHypervisor runs the driver suite against the real
// Cloud Hypervisor wherever it can run: its binary on PATH, root, and a KVM
// that kvm.Probe finds usable (not merely a /dev/kvm). It re-executes
// itself in a fresh network namespace, so the VMs it boots (one at a time)
// reach nothing outside.
func TestConformanceCloudHypervisor(t *testing.T) {
	if os.Getenv(envInNetns) != "1" {
		bin, err := exec.LookPath("cloud-hypervisor")
		if err != nil {
			t.Skip("cloud-hypervisor not on PATH: the real-VMM conformance run needs it (the fake-VMM run covers the driver logic)")
		}
		if os.Geteuid() != 0 {
			t.Skip("not root: needs a network namespace and /dev/kvm")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		probe := kvm.Probe(ctx, kvm.Options{})
		cancel()
		if !probe.Usable {
			t.Skipf("cloud-hypervisor found at %s but KVM is not usable here: %s", bin, probe.Reason)
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestConformanceCloudHypervisor$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), envInNetns+"=1", "MINIONS_FAKE_CH=")
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Run(); err != nil {
			t.Fatalf("conformance run in a network namespace: %v", err)
		}
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cache, _ := os.UserCacheDir()
	kernel, err := tinyvm.Kernel(ctx, filepath.Join(cache, "minions-test", "kernel"))
	if err != nil {
		t.Fatalf("fixture kernel: %v", err)
	}
	initramfs, err := tinyvm.Initramfs(ctx, t.TempDir())
	if err != nil {
		t.Fatalf("fixture initramfs: %v", err)
	}
	d, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	cid := uint32(100)
	conformance.Run(t, conformance.Fixture{
		Driver: d,
		NewSpec: func(t *testing.T) hypervisor.Spec {
			run, err := os.MkdirTemp("", "chr")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(run) })
			cid++
			return hypervisor.Spec{
				ID: fmt.Sprintf("%012x", cid), Name: "conformance", CPUs: 1, MemoryMiB: 256,
				Kernel: kernel, Initramfs: initramfs, Cmdline: tinyvm.Cmdline(),
				RunDir: run, ConsoleLog: filepath.Join(run, "console.log"), VsockCID: cid,
			}
		},
		GuestRunning: func(ctx context.Context, spec hypervisor.Spec, _ *hypervisor.Handle) error {
			if err := tinyvm.WaitFor(ctx, spec.ConsoleLog, tinyvm.ReadyMarker, 1); err != nil {
				return err
			}
			start := tinyvm.LastTick(spec.ConsoleLog)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for tinyvm.LastTick(spec.ConsoleLog) <= start {
				select {
				case <-ctx.Done():
					return fmt.Errorf("console ticks stuck at %d: %w", start, ctx.Err())
				case <-tick.C:
				}
			}
			return nil
		},
	})
}
