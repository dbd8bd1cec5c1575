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

// A disk whose chain has a middle layer (an overlay of an overlay of the
// base) is rebased onto the base: the middle layer's data is copied into
// it, the guest reads the same, and the middle layer can go.
func TestRebaseKeepsContent(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "qemu-io")
	ctx := testCtx(t)
	dir := t.TempDir()
	base := makeBase(t, dir, 16<<20)
	mid := filepath.Join(dir, "mid.qcow2")
	if err := CreateOverlay(ctx, base, FormatRaw, mid, 0); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, FormatQcow2, mid, "write -P 0xab 1M 1M")
	top := filepath.Join(dir, "top.qcow2")
	if err := CreateOverlay(ctx, mid, FormatQcow2, top, 0); err != nil {
		t.Fatal(err)
	}
	qemuIO(t, FormatQcow2, top, "write -P 0xcd 3M 64k")
	if err := Rebase(ctx, top, "relative.raw", FormatRaw); err == nil {
		t.Fatal("a relative backing path was accepted")
	}
	if err := Rebase(ctx, top, base, FormatRaw); err != nil {
		t.Fatal(err)
	}
	info, err := Info(ctx, top)
	if err != nil || info.Backing != base || info.BackingFmt != FormatRaw {
		t.Fatalf("info after the rebase = %+v, %v; want backed by %s", info, err, base)
	}
	os.Remove(mid)
	qemuIO(t, FormatQcow2, top, "read -P 0x11 0 1M")
	qemuIO(t, FormatQcow2, top, "read -P 0xab 1M 1M")
	qemuIO(t, FormatQcow2, top, "read -P 0xcd 3M 64k")
}
