package engine

import (
	"bytes"
	"context"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/cpus"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// holdsSeen records what holds cpus.Default while a stream is read or
// written.
type holdsSeen struct {
	r    io.Reader
	seen []string
}

func (h *holdsSeen) Read(b []byte) (int, error) {
	h.seen = append(h.seen, cpus.Default.Holders()...)
	return h.r.Read(b)
}

func (h *holdsSeen) Write(b []byte) (int, error) {
	h.seen = append(h.seen, cpus.Default.Holders()...)
	return len(b), nil
}

// TestStreamsHoldCPUs: a disk's import, staging and export run while they
// hold cpus.Default (the daemon then has its default Ps, internal/cpus),
// and let go when they end.
func TestStreamsHoldCPUs(t *testing.T) {
	fx := newFixture(t)
	ctx := context.Background()
	if err := store.InsertUser(ctx, fx.eng.DB, store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	disk := bytes.Repeat([]byte("held "), 100000)
	stream := func(id string) *holdsSeen {
		var b bytes.Buffer
		h := DiskHeader{ID: id, Name: "held", Image: "minimal@1", CPUs: 1, MemoryMiB: 256, DiskGiB: 1, Size: int64(len(disk))}
		if err := WriteDiskStream(&b, h, bytes.NewReader(disk)); err != nil {
			t.Fatal(err)
		}
		return &holdsSeen{r: &b}
	}
	check := func(what string, h *holdsSeen, want string) {
		t.Helper()
		if !slices.Contains(h.seen, want) {
			t.Errorf("%s: holders seen during the stream %q, want %q among them", what, h.seen, want)
		}
		if got := cpus.Default.Holders(); len(got) != 0 {
			t.Errorf("%s: still held by %q after it ended", what, got)
		}
	}
	id := vm.NewID()
	in := stream(id)
	if _, err := fx.eng.ImportDisk(ctx, ImportSpec{ID: id, Name: "held", Owner: "u1"}, in, nil); err != nil {
		t.Fatal(err)
	}
	check("import", in, "disk import")
	out := &holdsSeen{}
	if err := fx.eng.ExportDisk(ctx, id, out); err != nil {
		t.Fatal(err)
	}
	check("export", out, "disk export")
	sid := vm.NewID()
	st := stream(sid)
	if err := fx.eng.StageDisk(ctx, ImportSpec{ID: sid, Name: "staged", Owner: "u1"}, st, nil); err != nil {
		t.Fatal(err)
	}
	check("stage", st, "disk stage")
}
