package engine

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

func TestDiskStreamRoundTripAndRefusals(t *testing.T) {
	disk := bytes.Repeat([]byte("minions disk "), 100000)
	h := DiskHeader{ID: vm.NewID(), Name: "web", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: int64(len(disk))}
	var s bytes.Buffer
	if err := WriteDiskStream(&s, h, bytes.NewReader(disk)); err != nil {
		t.Fatal(err)
	}
	read := func(b []byte) ([]byte, error) {
		br := bufio.NewReaderSize(bytes.NewReader(b), maxDiskHeader)
		got, err := ReadDiskHeader(br)
		if err != nil {
			return nil, err
		}
		if got.ID != h.ID || got.Size != h.Size || got.Image != h.Image {
			t.Fatalf("header %+v, want %+v", got, h)
		}
		var out bytes.Buffer
		err = ReadDiskBody(br, got, &out)
		return out.Bytes(), err
	}
	got, err := read(s.Bytes())
	if err != nil || !bytes.Equal(got, disk) {
		t.Fatalf("round trip: %d bytes, %v", len(got), err)
	}
	// One flipped byte in the disk.
	bad := bytes.Clone(s.Bytes())
	bad[len(bad)/2] ^= 1
	if _, err := read(bad); errs.ClassOf(err) != errs.InvalidArgument {
		t.Errorf("corrupt stream: %v, want InvalidArgument", err)
	}
	// Cut short: in the disk, and in the trailer.
	for _, cut := range []int{len(s.Bytes()) / 2, len(s.Bytes()) - 5} {
		if _, err := read(s.Bytes()[:cut]); errs.ClassOf(err) != errs.InvalidArgument {
			t.Errorf("stream cut at %d: %v, want InvalidArgument", cut, err)
		}
	}
	// A disk shorter than its header says cannot be written.
	h2 := h
	h2.Size++
	if err := WriteDiskStream(&bytes.Buffer{}, h2, bytes.NewReader(disk)); err == nil {
		t.Error("short disk written")
	}
}
