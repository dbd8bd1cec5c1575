package qemu

import (
	"context"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

// TestRAMSizeAvoidsSyncFastPath: under TCG the guest RAM is a few KiB
// more than its MiB, so its RAM block's length is not a multiple of
// 64 pages and QEMU 7.2 syncs its migration dirty bitmap page by page,
// the path that resets the TCG TLB (tcgRAMPadKiB); the -m option, a RAM
// file and a memory backend all have that size. Under KVM, and for a
// machine saved without the pad, the RAM is exactly its MiB.
func TestRAMSizeAvoidsSyncFastPath(t *testing.T) {
	for _, tc := range []struct {
		accel, size string
		pad         int
	}{{AccelTCG, "262152K", tcgRAMPadKiB}, {AccelKVM, "256M", 0}} {
		m := machine{Accel: tc.accel, MemoryMiB: 256}
		m.setRAMPad()
		want := int64(256)<<20 + int64(tc.pad)<<10
		if m.ramBytes() != want {
			t.Errorf("%s: ram %d bytes, want %d", tc.accel, m.ramBytes(), want)
		}
		fast := m.ramBytes()%(64*4096) == 0
		if fast != (tc.accel == AccelKVM) {
			t.Errorf("%s: ram %d bytes takes the sync fast path: %v", tc.accel, m.ramBytes(), fast)
		}
		args := m.args()
		i := slices.Index(args, "-m")
		if i < 0 || args[i+1] != tc.size {
			t.Errorf("%s: -m %v, want %s", tc.accel, args[i+1:i+2], tc.size)
		}
		m.MemFile = "/dev/shm/x"
		if got := m.memoryBackendArgs(); len(got) != 2 || !strings.Contains(got[1], "size="+tc.size+",") {
			t.Errorf("%s: memory backend %v, want size %s", tc.accel, got, tc.size)
		}
	}
	// A copy of a machine saved before the pad keeps its exact size.
	old := machine{Accel: AccelTCG, MemoryMiB: 256}
	m := machine{Accel: AccelTCG, MemoryMiB: 256}
	m.setRAMPad()
	m.adoptRAM(old)
	if m.ramBytes() != 256<<20 {
		t.Errorf("adopted ram %d bytes, want %d", m.ramBytes(), 256<<20)
	}
}

// TestConvergeTimedOut: the QMP socket's deadline error counts as the
// convergence wait's timeout even before the context's timer fired.
func TestConvergeTimedOut(t *testing.T) {
	live, cancel := context.WithCancel(context.Background())
	defer cancel()
	sockErr := errs.New(errs.Unavailable, "qmp query-migrate: write: %w", &net.OpError{Op: "write", Net: "unix", Err: os.ErrDeadlineExceeded})
	if !convergeTimedOut(live, sockErr) {
		t.Error("a socket deadline error is not a timeout")
	}
	if convergeTimedOut(live, errors.New("migration failed: boom")) {
		t.Error("another error is a timeout")
	}
	done, cancel2 := context.WithTimeout(context.Background(), 0)
	defer cancel2()
	<-done.Done()
	if !convergeTimedOut(done, nil) {
		t.Error("an expired context is not a timeout")
	}
}
