package engine

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"

	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/network"
)

// The subsystems of this host as a Local engine drives them: its bridge
// and firewall (vm/network), its filesystem (vm/disk) and its image
// catalogue (images). The composition root builds Deps from these.

// HostNetwork is Network on this host's bridge and nftables table.
type HostNetwork struct{ M *network.Manager }

var _ Network = HostNetwork{}

// AddPort implements Network; mac is the VM's "aa:bb:..." address.
func (n HostNetwork) AddPort(ctx context.Context, tap string, ip netip.Addr, mac string) error {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return errs.New(errs.InvalidArgument, "mac %q: %v", mac, err)
	}
	return n.M.AddPort(ctx, network.Port{TAP: tap, IP: ip, MAC: hw})
}

// RemovePort implements Network.
func (n HostNetwork) RemovePort(ctx context.Context, tap string) error {
	return n.M.RemovePort(ctx, tap)
}

// HostDisks is Disks on this host's filesystem (package vm/disk: qcow2
// overlays, reflink or copied clones).
type HostDisks struct{}

var _ Disks = HostDisks{}

// CreateOverlay implements Disks.
func (HostDisks) CreateOverlay(ctx context.Context, base, baseFormat, path string, sizeBytes int64) error {
	return disk.CreateOverlay(ctx, base, baseFormat, path, sizeBytes)
}

// Clone implements Disks.
func (HostDisks) Clone(ctx context.Context, src, dst string) error {
	_, err := disk.Clone(ctx, src, dst)
	return err
}

// CloneUnsynced implements unsyncedCloner (fork.go).
func (HostDisks) CloneUnsynced(ctx context.Context, src, dst string) error {
	_, err := disk.CloneUnsynced(ctx, src, dst)
	return err
}

// CloneOverUnsynced implements overCloner (fork.go).
func (HostDisks) CloneOverUnsynced(ctx context.Context, src, dst string) error {
	_, err := disk.CloneOverUnsynced(ctx, src, dst)
	return err
}

// SyncFile implements unsyncedCloner.
func (HostDisks) SyncFile(path string) error { return disk.SyncFile(path) }

// Grow implements Disks.
func (HostDisks) Grow(ctx context.Context, path string, sizeBytes int64) error {
	return disk.Grow(ctx, path, sizeBytes)
}

// CatalogImages is Images over this host's catalogue: an image with the
// newest installed guest kernel and an initramfs built for it around the
// guest agent binary Agent finds (the one that ships with this minions).
type CatalogImages struct {
	Cat   *images.Catalog
	Agent func() (string, error) // path of the guest agent binary
}

var _ Images = CatalogImages{}

// Resolve implements Images. errs.NotFound names the images that exist
// (or says how to build the first); errs.FailedPrecondition when no guest
// kernel is installed.
func (c CatalogImages) Resolve(ctx context.Context, ref string) (Image, error) {
	im, err := c.Cat.Resolve(ref)
	if err != nil {
		if errors.Is(err, errs.NotFound) {
			var refs []string
			if all, lerr := c.Cat.List(); lerr == nil {
				for _, i := range all {
					refs = append(refs, i.Ref())
				}
			}
			if len(refs) == 0 {
				return Image{}, errs.New(errs.NotFound, "%v; no image is built yet: run `minions image build --os minimal`", err)
			}
			return Image{}, errs.New(errs.NotFound, "%v; available: %s", err, strings.Join(refs, ", "))
		}
		return Image{}, err
	}
	k, err := images.NewestKernel(c.Cat.KernelDir())
	if err != nil {
		return Image{}, errs.New(errs.FailedPrecondition, "no guest kernel installed: run `minions image build --os minimal` (it installs one): %w", err)
	}
	agent, err := c.Agent()
	if err != nil {
		return Image{}, err
	}
	initrd, err := c.Cat.Initramfs(ctx, k, agent)
	if err != nil {
		return Image{}, err
	}
	return Image{Ref: im.Ref(), OS: im.OS, Path: im.Path, Format: "raw", SizeBytes: im.SizeBytes, Kernel: k.Path, Initramfs: initrd.Path}, nil
}

// SetBacking implements Rebaser.
func (HostDisks) SetBacking(ctx context.Context, path, backing, backingFormat string) error {
	return disk.SetBacking(ctx, path, backing, backingFormat)
}
