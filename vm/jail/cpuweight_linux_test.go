package jail

import (
	"fmt"
	"os"
	"testing"
)

// TestCgroupCPUWeightBalanced checks that the parent of the VMs' cgroups
// weighs as much as the VMs in it: left at the default (one task's weight)
// it would give all VMs together the CPU share of one host process.
func TestCgroupCPUWeightBalanced(t *testing.T) {
	needRoot(t)
	parent := fmt.Sprintf("minions-test-w%d", os.Getpid())
	a, b := parent+"/a", parent+"/b"
	t.Cleanup(func() { DeleteCgroup(a); DeleteCgroup(b); DeleteCgroup(parent) })
	w, err := cpuWeights()
	if err != nil {
		t.Fatal(err)
	}
	// unit is the weight of one vCPU (one busy task) in this hierarchy.
	unit := w.def
	want := func(name string, n uint64) {
		t.Helper()
		if got, err := CgroupCPUWeight(name); err != nil || got != n*unit {
			t.Errorf("cpu weight of %s = %d, %v; want %d", name, got, err, n*unit)
		}
	}
	for _, c := range []struct {
		name string
		cpus int
	}{{a, 2}, {b, 3}} {
		l, err := Config{}.Limits(c.cpus, 64)
		if err != nil {
			t.Fatal(err)
		}
		if err := CreateCgroup(c.name, l); err != nil {
			t.Fatal(err)
		}
	}
	want(a, 2)
	want(b, 3)
	want(parent, 5)
	if err := DeleteCgroup(b); err != nil {
		t.Fatal(err)
	}
	want(parent, 2)
	if err := DeleteCgroup(a); err != nil {
		t.Fatal(err)
	}
	want(parent, 1) // the kernel's default again
}
