// Package testenv decides what a test does when the machine lacks something
// it needs. Outside CI a missing prerequisite skips the test; in CI
// (CI=true, as .ci/run and scripts/test.sh run), where the machine is set up
// to run every test that does not need hardware it cannot have, the same
// missing prerequisite fails the test, so a broken fixture cannot hide as a
// skip.
//
// Use it only for things a CI machine has (root, QEMU, the fixture kernel,
// an agent build, network namespaces). Skips for things it cannot have (a
// Cloud Hypervisor binary, usable KVM) stay plain t.Skip.
package testenv

import (
	"os"
	"strconv"
)

// TB is the part of testing.TB the helpers use.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
}

// InCI reports whether the CI environment variable is set to a true value
// ("true", "1", ...).
func InCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// SkipUnlessCI skips t with reason outside CI and fails it in CI. It does
// not return in either case.
func SkipUnlessCI(t TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("CI=true: a test this machine can run would skip: %s", reason)
	}
	t.Skipf("%s", reason)
}

// NeedOrFail returns when ok is true; otherwise it calls SkipUnlessCI.
func NeedOrFail(t TB, ok bool, reason string) {
	t.Helper()
	if !ok {
		SkipUnlessCI(t, reason)
	}
}
