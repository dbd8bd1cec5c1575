//go:build linux

package kvm

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

func TestProbeMissingDevice(t *testing.T) {
	r := Probe(context.Background(), Options{Device: "/nonexistent/kvm"})
	if r.Usable || r.DevicePresent || !strings.Contains(r.Reason, "/nonexistent/kvm") {
		t.Fatalf("Probe = %+v, want not usable, device absent, reason naming the path", r)
	}
}

func TestProbeNotKVMDevice(t *testing.T) {
	// /dev/null opens but answers no KVM ioctl: the open stage must fail.
	r := Probe(context.Background(), Options{Device: "/dev/null"})
	if r.Usable || len(r.Stages) != 1 || r.Stages[0].Name != StageOpen || r.Stages[0].OK {
		t.Fatalf("Probe(/dev/null) = %s", r)
	}
}

// TestProbeHost runs the real probe. Where /dev/kvm exists every stage up to
// the first failure must have run, and the real-mode and long-mode stages
// must pass (they do on every KVM flavour seen, including PVM); the verdict
// itself depends on the host and is logged.
func TestProbeHost(t *testing.T) {
	if _, err := os.Stat(DefaultDevice); err != nil {
		t.Skipf("no %s on this host: %v", DefaultDevice, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := Probe(ctx, Options{})
	t.Logf("\n%s", r)
	if !r.DevicePresent || r.APIVersion != 12 {
		t.Fatalf("device present %v, api version %d", r.DevicePresent, r.APIVersion)
	}
	if len(r.Stages) < 3 || !r.Stages[1].OK || !r.Stages[2].OK {
		t.Fatalf("real and long stages must pass on any KVM: %s", r)
	}
	if r.Usable != (len(r.Stages) == 4 && r.Stages[3].OK) {
		t.Fatalf("Usable %v disagrees with stages: %s", r.Usable, r)
	}
	if !r.Usable && !strings.Contains(r.Reason, r.Stages[len(r.Stages)-1].Detail) {
		t.Fatalf("Reason %q does not carry the failing stage's detail", r.Reason)
	}
	// This host is a PVM guest: stock kernels die on CMPXCHG16B emulation.
	// MINIONS_EXPECT_KVM=0 makes that an assertion (set on such hosts).
	switch os.Getenv("MINIONS_EXPECT_KVM") {
	case "0":
		if r.Usable {
			t.Fatalf("KVM reported usable on a host declared unusable")
		}
	case "1":
		if !r.Usable {
			t.Fatalf("KVM reported unusable on a host declared usable: %s", r.Reason)
		}
	}
}

func TestProbeTimeout(t *testing.T) {
	if _, err := os.Stat(DefaultDevice); err != nil {
		t.Skipf("no %s on this host: %v", DefaultDevice, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := Probe(ctx, Options{})
	if r.Usable {
		t.Fatalf("Probe with a cancelled context reported usable")
	}
}

func TestDescribeInsn(t *testing.T) {
	tests := []struct {
		in   []byte
		want string
	}{
		{[]byte{0xf0, 0x48, 0x0f, 0xc7, 0x4d, 0x20}, "lock cmpxchg16b"}, // from the Debian kernel's crash here
		{[]byte{0x0f, 0xc7, 0x0e}, "cmpxchg8b"},
		{[]byte{0x0f, 0xc7, 0xf0}, "an instruction"}, // rdrand
		{[]byte{0x90}, "an instruction"},
	}
	for _, tt := range tests {
		if got := describeInsn(tt.in); got != tt.want {
			t.Errorf("describeInsn(% x) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestInsnBytes(t *testing.T) {
	// The exit seen on this host: flags 1, size 15, bytes f0 48 0f c7 0c 25 00 48 ...
	e := exit{reason: exitInternalError, suberror: 1, data: []uint64{1, 0x250cc70f48f00f, 0x8b0010ba66000048, 0x1000}}
	got := e.String()
	want := "KVM internal error: emulation failure on lock cmpxchg16b (f0 48 0f c7 0c 25 00 48 00 00 66 ba 10 00 8b)"
	if got != want {
		t.Fatalf("String = %q\nwant      %q", got, want)
	}
}
