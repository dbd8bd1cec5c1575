package disk

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestNativeOverlayAsQemuImg: the overlay CreateOverlay writes itself is,
// for qemu-img, the image `qemu-img create -f qcow2 -b BASE -F FMT` makes:
// the same info (format, compat, cluster size, refcount bits, size,
// backing file and format), a clean `qemu-img check`, the base's data,
// writes that grow it and leave it clean; for sizes from the base's to
// 4 TiB, over a raw and a qcow2 base. Sizes it cannot write (not whole
// sectors, over 4 TiB) still work, through qemu-img.
func TestNativeOverlayAsQemuImg(t *testing.T) {
	needTool(t, "qemu-img")
	needTool(t, "qemu-io")
	ctx := testCtx(t)
	dir := t.TempDir()
	raw := makeBase(t, dir, 64<<20)
	q2 := filepath.Join(dir, "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", raw, "-F", "raw", q2).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	type info struct {
		Format        string `json:"format"`
		VirtualSize   int64  `json:"virtual-size"`
		ClusterSize   int64  `json:"cluster-size"`
		Backing       string `json:"backing-filename"`
		BackingFormat string `json:"backing-filename-format"`
		Specific      struct {
			Data struct {
				Compat        string `json:"compat"`
				RefcountBits  int    `json:"refcount-bits"`
				Corrupt       bool   `json:"corrupt"`
				LazyRefcounts bool   `json:"lazy-refcounts"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	imgInfo := func(p string) info {
		t.Helper()
		out, err := exec.Command("qemu-img", "info", "--output", "json", p).Output()
		if err != nil {
			t.Fatalf("qemu-img info %s: %v", p, err)
		}
		var i info
		if err := json.Unmarshal(out, &i); err != nil {
			t.Fatal(err)
		}
		return i
	}
	check := func(p string) {
		t.Helper()
		if out, err := exec.Command("qemu-img", "check", p).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img check %s: %v\n%s", p, err, out)
		}
	}
	n := 0
	for _, c := range []struct {
		base, format string
		size         int64
		native       bool
	}{
		{raw, FormatRaw, 0, true},
		{raw, FormatRaw, 2 << 30, true},
		{raw, FormatRaw, 2<<30 + 512, true},
		{raw, FormatRaw, 3<<30 + 1, false},
		{raw, FormatRaw, 4 << 40, true},
		{raw, FormatRaw, 4<<40 + 1<<29, false},
		{q2, FormatQcow2, 1 << 30, true},
	} {
		n++
		size := c.size
		if size == 0 {
			size = 64 << 20
		}
		if got := nativeOverlayOK(c.base, c.format, size); got != c.native {
			t.Fatalf("size %d: native %v, want %v", size, got, c.native)
		}
		ours := filepath.Join(dir, "ours"+strconv.Itoa(n)+".qcow2")
		start := time.Now()
		if err := CreateOverlay(ctx, c.base, c.format, ours, c.size); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		took := time.Since(start)
		theirs := filepath.Join(dir, "theirs"+strconv.Itoa(n)+".qcow2")
		start = time.Now()
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", c.base, "-F", c.format, theirs, strconv.FormatInt(size, 10)).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t.Logf("size %d (native %v): CreateOverlay %v, qemu-img create %v", size, c.native, took, time.Since(start))
		if got, want := imgInfo(ours), imgInfo(theirs); got != want {
			t.Fatalf("size %d: info\n got %+v\nwant %+v", size, got, want)
		}
		check(ours)
		if st, _ := os.Stat(ours); c.native && st.Mode().Perm() != 0o644 {
			t.Errorf("mode %v", st.Mode())
		}
		qemuIO(t, FormatQcow2, ours, "read -P 0x11 0 1M")
		qemuIO(t, FormatQcow2, ours, "read -P 0x22 32M 1M")
		qemuIO(t, FormatQcow2, ours, "write -P 0xab 1M 3M")
		qemuIO(t, FormatQcow2, ours, "write -P 0xcd "+strconv.FormatInt(size-(1<<20), 10)+" 1M")
		qemuIO(t, FormatQcow2, ours, "read -P 0x11 0 1M")
		qemuIO(t, FormatQcow2, ours, "read -P 0xab 1M 3M")
		check(ours)
	}
}
