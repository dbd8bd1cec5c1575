package images

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"
)

// testDep is a modules.dep with every module of InitramfsModules; dep is
// what virtio_blk needs besides virtio.
func testDep(dep string) string {
	return "kernel/virtio_ring.ko:\n" +
		"kernel/virtio.ko: kernel/virtio_ring.ko\n" +
		"kernel/virtio_mmio.ko: kernel/virtio.ko kernel/virtio_ring.ko\n" +
		"kernel/virtio_pci.ko: kernel/virtio.ko kernel/virtio_ring.ko\n" +
		"kernel/virtio_blk.ko: kernel/virtio.ko kernel/virtio_ring.ko" + dep + "\n" +
		"kernel/extra.ko:\n" +
		"kernel/virtio_net.ko: kernel/virtio.ko kernel/virtio_ring.ko\n" +
		"kernel/virtio_console.ko: kernel/virtio.ko kernel/virtio_ring.ko\n" +
		"kernel/vsock.ko:\n" +
		"kernel/vmw_vsock_virtio_transport.ko: kernel/vsock.ko kernel/virtio.ko kernel/virtio_ring.ko\n"
}

// TestInitramfsLoadOrderCached: the load order is read once per
// modules.dep file and read again when the file is replaced; a missing
// file is an error.
func TestInitramfsLoadOrderCached(t *testing.T) {
	dir := t.TempDir()
	dep := filepath.Join(dir, "modules.dep")
	write := func(s string) {
		t.Helper()
		tmp := dep + ".tmp"
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, dep); err != nil { // a new inode, as depmod writes it
			t.Fatal(err)
		}
	}
	if _, err := initramfsLoadOrder(dir); err == nil {
		t.Fatal("no modules.dep: no error")
	}
	write(testDep(""))
	first, err := initramfsLoadOrder(dir)
	if err != nil {
		t.Fatal(err)
	}
	deps, _ := ParseModulesDep([]byte(testDep("")))
	want, _ := deps.LoadOrder(InitramfsModules)
	if !reflect.DeepEqual(first, want) {
		t.Fatalf("load order %q, want %q", first, want)
	}
	// Cached: the same slice comes back without reading the file.
	again, err := initramfsLoadOrder(dir)
	if err != nil || &again[0] != &first[0] {
		t.Fatalf("second call: %v, %v; want the cached order", again, err)
	}
	// Rewritten with another dependency: read again.
	write(testDep(" kernel/extra.ko"))
	now := time.Now()
	os.Chtimes(dep, now, now)
	changed, err := initramfsLoadOrder(dir)
	if err != nil {
		t.Fatal(err)
	}
	if reflect.DeepEqual(changed, first) || !slices.Contains(changed, "kernel/extra.ko") {
		t.Fatalf("after modules.dep changed: %q", changed)
	}
	loadOrders.mu.Lock()
	n := 0
	for k := range loadOrders.m {
		if k.path == dep {
			n++
		}
	}
	loadOrders.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d cached orders for one modules.dep, want 1", n)
	}
}
