package qemu

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/minionsdev/minions/vm/disk"
)

// TestClonePreCopyRAM: a move of a warm clone (jailed, as by default)
// pre-copies its RAM. OpenRAM reads the clone's RAM as it is: with the
// clone paused, every 128 KiB chunk read equals the same chunk of the
// RAM file that SaveStateKeepRAM then keeps for it (device state only in
// the stream), and a chunk OpenRAM calls a hole reads as zeros. A restore
// of that state (the move's undo on the source) runs the clone again with
// what it had in memory.
func TestClonePreCopyRAM(t *testing.T) {
	g, ctx, dir, tplKey, tplDisk := jailedTemplate(t, "tpp0")
	spec := g.spec(t, "pcc1", 256, tplDisk, disk.FormatQcow2, "mqp1", "52:54:00:77:03:01", "10.77.0.81/24")
	h, key := g.startClone(t, ctx, dir, tplKey, spec, netip.MustParsePrefix("10.77.0.81/24"))
	defer func() { g.d.Kill(context.Background(), h) }()
	g.run(t, ctx, h, key, "mkdir -p /run/t && mount -t tmpfs tmpfs /run/t 2>/dev/null; head -c 8388608 /dev/urandom > /run/t/blob")
	want := g.run(t, ctx, h, key, "md5sum /run/t/blob")

	ram, size, err := g.d.OpenRAM(h)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	if size < 256<<20 || size > 256<<20+tcgRAMPadKiB<<10 {
		t.Fatalf("OpenRAM size %d", size)
	}
	// Once while it runs (what a pre-copy does), then paused.
	if _, err := io.Copy(io.Discard, io.NewSectionReader(ram, 0, size)); err != nil {
		t.Fatalf("read the running clone's ram: %v", err)
	}
	if err := g.d.execute(ctx, h, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	const chunk = 128 << 10
	var sums [][32]byte
	holes := 0
	buf := make([]byte, chunk)
	zero := make([]byte, chunk)
	for off := int64(0); off < size; off += chunk {
		b := buf[:min(chunk, size-off)]
		if _, err := ram.ReadAt(b, off); err != nil {
			t.Fatalf("read at %d: %v", off, err)
		}
		if ram.Hole(off, int64(len(b))) {
			holes++
			if !bytes.Equal(b, zero[:len(b)]) {
				t.Fatalf("chunk at %d is called a hole and reads as non-zero", off)
			}
		}
		sums = append(sums, sha256.Sum256(b))
	}
	sd := t.TempDir()
	if err := g.d.SaveStateKeepRAM(ctx, h, sd); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(sd, StateMemoryFile)); err != nil || st.Size() > 4<<20 {
		t.Fatalf("state stream: %v, %v (want device state only)", st, err)
	}
	kept := g.d.StateRAM(sd)
	if kept == "" || filepath.Dir(kept) != g.d.memDir {
		t.Fatalf("kept ram %q, want a file in %s", kept, g.d.memDir)
	}
	f, err := os.Open(kept)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	differ := 0
	for i := range sums {
		b := buf[:min(chunk, size-int64(i)*chunk)]
		if _, err := f.ReadAt(b, int64(i)*chunk); err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(b) != sums[i] {
			differ++
		}
	}
	t.Logf("%d chunks of 128 KiB, %d holes; %d differ between OpenRAM's read and the kept ram", len(sums), holes, differ)
	if differ > 0 || holes == 0 || holes == len(sums) {
		t.Fatalf("OpenRAM and the kept ram differ in %d chunks (holes %d of %d)", differ, holes, len(sums))
	}

	// The move's undo: the clone runs again from the kept state.
	g.d.Kill(ctx, h)
	h, err = g.d.Restore(ctx, spec, sd)
	if err != nil {
		t.Fatal(err)
	}
	if got := g.run(t, ctx, h, key, "md5sum /run/t/blob"); got != want {
		t.Errorf("after the restore the blob is %q, was %q", got, want)
	}
	if err := g.d.DiscardCopy(sd); err != nil {
		t.Fatal(err)
	}
}
