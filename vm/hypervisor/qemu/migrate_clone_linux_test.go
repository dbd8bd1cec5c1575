package qemu

import (
	"context"
	"net/netip"
	"testing"

	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// TestLiveMigrateJailedClone live-migrates a warm clone under the per-VM
// jail (its RAM a private mapping of the template's sealed memfd) to a
// new QEMU, as a move --live of a VM created warm does: the target takes
// the whole RAM into a file of its own, and the guest answers there with
// the clone's identity and the memory it wrote.
func TestLiveMigrateJailedClone(t *testing.T) {
	g, ctx, dir, tplKey, tplDisk := jailedTemplate(t, "tlm0")
	ip := netip.MustParsePrefix("10.77.0.71/24")
	spec := g.spec(t, "lmc1", 256, tplDisk, disk.FormatQcow2, "mql1", "52:54:00:77:03:01", ip.String())
	h, key := g.startClone(t, ctx, dir, tplKey, spec, ip)
	defer func() { g.d.Kill(context.Background(), h) }()
	sum := g.run(t, ctx, h, key, "dd if=/dev/urandom of=/dev/shm/f bs=1M count=8 2>/dev/null && md5sum /dev/shm/f")

	dst := g.spec(t, "lmc2", 256, tplDisk, disk.FormatQcow2, "mql2", "52:54:00:77:03:01", ip.String())
	dst.ID, dst.Name = spec.ID, spec.Name // the same VM on another host
	desc, err := g.d.DescribeOut(h)
	if err != nil {
		t.Fatal(err)
	}
	hd, err := g.d.StartIncoming(ctx, dst, desc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.d.MigrateOut(ctx, h, dialIncoming(t, g.d, hd, hypervisor.ChannelNBD), dialIncoming(t, g.d, hd, hypervisor.ChannelMigration), nil); err != nil {
		t.Fatalf("MigrateOut: %v\n%s", err, liveTargetDiag(g.d, hd, dst))
	}
	if err := g.d.FinishIncoming(ctx, hd); err != nil {
		t.Fatalf("FinishIncoming: %v\n%s", err, liveTargetDiag(g.d, hd, dst))
	}
	g.d.Kill(ctx, h)
	h = hd
	if got := g.run(t, ctx, h, key, "hostname; md5sum /dev/shm/f"); got != "lmc1\n"+sum {
		t.Errorf("after the move the guest says %q, want hostname lmc1 and %q", got, sum)
	}
}
