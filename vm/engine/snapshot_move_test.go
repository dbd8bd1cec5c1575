package engine

import (
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// TestBundleMemorySnapshotFiles: a bundle carries a snapshot's memory and
// key only for a snapshot it says is a memory snapshot, and such a
// snapshot must come with its disk and key.
func TestBundleMemorySnapshotFiles(t *testing.T) {
	snap := vm.NewID()
	base := func(memory bool, files ...string) BundleHeader {
		h := BundleHeader{Version: BundleStreamVersion, Checksum: StreamChecksum, ID: vm.NewID(), Name: "web", Image: "minimal@1",
			CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Snapshots: []BundleSnapshot{{ID: snap, Name: "s1", CreatedAt: time.Now(), Memory: memory}}}
		for _, f := range append([]string{"disk.qcow2"}, files...) {
			h.Files = append(h.Files, BundleFile{Path: f, Size: 1})
		}
		return h
	}
	dir := "snapshots/" + snap + "/"
	for _, tc := range []struct {
		name string
		h    BundleHeader
		ok   bool
	}{
		{"memory snapshot", base(true, dir+"disk.qcow2", dir+"agent_key", dir+"memory/state"), true},
		{"disk snapshot", base(false, dir+"disk.qcow2"), true},
		{"memory without key", base(true, dir+"disk.qcow2", dir+"memory/state"), false},
		{"memory without disk", base(true, dir+"agent_key", dir+"memory/state"), false},
		{"key of a disk snapshot", base(false, dir+"disk.qcow2", dir+"agent_key"), false},
		{"memory of a disk snapshot", base(false, dir+"disk.qcow2", dir+"memory/state"), false},
		{"bad memory file", base(true, dir+"disk.qcow2", dir+"agent_key", dir+"memory/../x"), false},
	} {
		err := checkBundle(tc.h)
		if tc.ok && err != nil || !tc.ok && errs.ClassOf(err) != errs.InvalidArgument {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
