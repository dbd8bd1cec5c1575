package engine

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
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

// TestStageAndAdopt: a disk staged for the row of a VM recorded on another
// host (in this shared store) becomes this host's stopped instance when
// adopted, with an address of this host; a corrupt stream leaves nothing,
// and an instance of this host is never overwritten.
func TestStageAndAdopt(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	db := fx.eng.DB
	if err := store.InsertUser(ctx, db, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertHost(ctx, db, store.Host{ID: vm.NewID(), Name: "node-b", State: store.HostReady, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	hb, _ := store.GetHostByName(ctx, db, "node-b")
	row := store.VM{ID: vm.NewID(), Name: "away", OwnerID: "u1", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1,
		State: vm.Stopped, Port: 80, HostID: hb.ID, NodeIP: "10.9.0.5", CreatedAt: time.Now()}
	if err := store.RemotePlaceholders(ctx, db, &row); err != nil {
		t.Fatal(err)
	}
	if err := store.InsertVM(ctx, db, row); err != nil {
		t.Fatal(err)
	}
	disk := []byte("the disk of away")
	stream := func(id string) []byte {
		var b bytes.Buffer
		h := DiskHeader{ID: id, Name: "away", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: int64(len(disk))}
		if err := WriteDiskStream(&b, h, bytes.NewReader(disk)); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	spec := ImportSpec{ID: row.ID, Name: "away", Owner: "u1"}
	bad := stream(row.ID)
	bad[len(bad)-40] ^= 1
	if err := fx.eng.StageDisk(ctx, spec, bytes.NewReader(bad), nil); errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("stage a corrupt stream: %v", err)
	}
	if _, err := os.Stat(fx.eng.vmDir(row.ID)); !os.IsNotExist(err) {
		t.Fatalf("a corrupt stage left files: %v", err)
	}
	if err := fx.eng.StageDisk(ctx, spec, bytes.NewReader(stream(row.ID)), nil); err != nil {
		t.Fatalf("stage: %v", err)
	}
	if _, err := fx.eng.Get(ctx, row.ID); errs.ClassOf(err) != errs.NotFound {
		t.Fatalf("a staged disk is an instance already: %v", err)
	}
	if err := db.Tx(ctx, func(q store.Q) error { return fx.eng.AdoptVM(ctx, q, row.ID) }); err != nil {
		t.Fatalf("adopt: %v", err)
	}
	inst, err := fx.eng.Get(ctx, row.ID)
	if err != nil || inst.State != vm.Stopped || strings.HasPrefix(inst.IP, "@") || inst.IP == "" || inst.Name != "away" {
		t.Fatalf("adopted %+v, %v", inst, err)
	}
	if got, _ := os.ReadFile(fx.eng.diskPath(row.ID)); !bytes.Equal(got, disk) {
		t.Errorf("adopted disk %q", got)
	}
	// This host's own instance is never overwritten.
	if err := fx.eng.StageDisk(ctx, spec, bytes.NewReader(stream(row.ID)), nil); errs.ClassOf(err) != errs.AlreadyExists {
		t.Fatalf("stage over this host's instance: %v", err)
	}
	if got, _ := os.ReadFile(fx.eng.diskPath(row.ID)); !bytes.Equal(got, disk) {
		t.Errorf("disk changed by a refused stage")
	}
}
