package service

import (
	"context"

	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/vm/engine"
)

// HostCatalog is this host's image catalogue as the service manages it:
// the engine's Images (engine.CatalogImages) and the service's
// ImageCatalog. The service checks who asks; the catalogue does the work.
type HostCatalog struct{ engine.CatalogImages }

var (
	_ Images       = HostCatalog{}
	_ ImageCatalog = HostCatalog{}
)

// NewHostCatalog is the catalogue cat with agent finding the guest agent
// binary baked into images and initramfs.
func NewHostCatalog(cat *images.Catalog, agent func() (string, error)) HostCatalog {
	return HostCatalog{engine.CatalogImages{Cat: cat, Agent: agent}}
}

func imageInfo(im images.Image) ImageInfo {
	return ImageInfo{Ref: im.Ref(), OS: im.OS, Version: im.Version, SizeBytes: im.SizeBytes, Created: im.Created,
		KernelVersion: im.KernelVersion, AgentSHA256: im.AgentSHA256, BuildSeconds: im.BuildSeconds, Path: im.Path}
}

// ListImages implements ImageCatalog.
func (h HostCatalog) ListImages(context.Context) ([]ImageInfo, error) {
	ims, err := h.Cat.List()
	if err != nil {
		return nil, err
	}
	out := make([]ImageInfo, 0, len(ims))
	for _, im := range ims {
		out = append(out, imageInfo(im))
	}
	return out, nil
}

// BuildImage implements ImageCatalog: it installs the guest kernel and
// its initramfs if needed, then builds the image.
func (h HostCatalog) BuildImage(ctx context.Context, req ImageBuildRequest, progress Progress) (ImageInfo, error) {
	say := func(s string) {
		if progress != nil {
			progress(s)
		}
	}
	agent, err := h.Agent()
	if err != nil {
		return ImageInfo{}, err
	}
	say("kernel")
	k, err := h.Cat.Kernel(ctx)
	if err != nil {
		return ImageInfo{}, err
	}
	say("initramfs")
	if _, err := h.Cat.Initramfs(ctx, k, agent); err != nil {
		return ImageInfo{}, err
	}
	im, err := h.Cat.Build(ctx, images.BuildOptions{OS: req.OS, SizeMiB: req.SizeMiB, Mirror: req.Mirror,
		RootfsTarball: req.RootfsTarball, NixOSModule: req.NixOSModule, AgentBinary: agent, Kernel: &k, Progress: say})
	if err != nil {
		return ImageInfo{}, err
	}
	return imageInfo(im), nil
}

// RemoveImage implements ImageCatalog.
func (h HostCatalog) RemoveImage(_ context.Context, ref string, inUse func(string) bool) ([]ImageInfo, error) {
	removed, err := h.Cat.Remove(ref, func(im images.Image) bool { return inUse(im.Ref()) })
	out := make([]ImageInfo, 0, len(removed))
	for _, im := range removed {
		out = append(out, imageInfo(im))
	}
	return out, err
}
