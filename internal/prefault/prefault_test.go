package prefault

import (
	"syscall"
	"testing"
	"unsafe"
)

// TestHeapChunkResident: after init the heap's current chunk, from the
// probe allocation on, is resident (mincore), though this test process
// has touched only a small part of it.
func TestHeapChunkResident(t *testing.T) {
	if Err != nil {
		t.Skipf("MADV_POPULATE_WRITE: %v (kernel before 5.14?)", Err)
	}
	p := uintptr(unsafe.Pointer(probe))
	start := p &^ (4096 - 1)
	end := (p &^ (chunkBytes - 1)) + chunkBytes
	vec := make([]byte, (end-start)/4096)
	if _, _, e := syscall.Syscall(syscall.SYS_MINCORE, start, end-start, uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		t.Fatal(e)
	}
	missing := 0
	for _, v := range vec {
		if v&1 == 0 {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d pages of the heap chunk not resident", missing, len(vec))
	}
}
