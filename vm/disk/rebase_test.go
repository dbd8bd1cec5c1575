package disk

import (
	"os"
	"path/filepath"
	"testing"
)

// A disk moved with a copy of its base (a restored backup) is pointed at
// the copy, and reads through it.
func TestSetBacking(t *testing.T) {
	needTool(t, "qemu-img")
	ctx := testCtx(t)
	a, b := t.TempDir(), t.TempDir()
	base := makeBase(t, a, 16<<20)
	ov := filepath.Join(a, "vm.qcow2")
	if err := CreateOverlay(ctx, base, FormatRaw, ov, 0); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(b, "vm.qcow2")
	newBase := filepath.Join(b, "base.raw")
	for src, dst := range map[string]string{ov: moved, base: newBase} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(dst, data, 0o600)
	}
	os.Remove(base)
	if err := SetBacking(ctx, moved, newBase, FormatRaw); err != nil {
		t.Fatal(err)
	}
	info, err := Info(ctx, moved)
	if err != nil || info.Backing != newBase || info.BackingFmt != FormatRaw {
		t.Fatalf("info = %+v, %v", info, err)
	}
	if out := qemuIO(t, FormatQcow2, moved, "read -P 0x11 0 1M"); out == "" {
		t.Fatal("no qemu-io output")
	}
	if err := SetBacking(ctx, moved, "relative.raw", FormatRaw); err == nil {
		t.Fatal("a relative backing path was accepted")
	}
}
