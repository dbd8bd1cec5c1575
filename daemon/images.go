package daemon

import (
	"context"

	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/service"
)

// The image catalogue as the service manages it (service.ImageCatalog):
// the service checks who asks, the catalogue does the work.

var _ service.ImageCatalog = imageAdapter{}

// CatalogImages is the service's image source over the catalogue cat:
// what Open gives the service (service.Images and service.ImageCatalog).
func CatalogImages(cat *images.Catalog) interface {
	service.Images
	service.ImageCatalog
} {
	return imageAdapter{cat: cat}
}

func imageInfo(im images.Image) service.ImageInfo {
	return service.ImageInfo{Ref: im.Ref(), OS: im.OS, Version: im.Version, SizeBytes: im.SizeBytes, Created: im.Created,
		KernelVersion: im.KernelVersion, AgentSHA256: im.AgentSHA256, BuildSeconds: im.BuildSeconds, Path: im.Path}
}

func (a imageAdapter) ListImages(context.Context) ([]service.ImageInfo, error) {
	ims, err := a.cat.List()
	if err != nil {
		return nil, err
	}
	out := make([]service.ImageInfo, 0, len(ims))
	for _, im := range ims {
		out = append(out, imageInfo(im))
	}
	return out, nil
}

// BuildImage installs the guest kernel and its initramfs if needed, then
// builds the image, as `minions image build` does.
func (a imageAdapter) BuildImage(ctx context.Context, req service.ImageBuildRequest, progress service.Progress) (service.ImageInfo, error) {
	say := func(s string) {
		if progress != nil {
			progress(s)
		}
	}
	agent, err := AgentBinary()
	if err != nil {
		return service.ImageInfo{}, err
	}
	say("kernel")
	k, err := a.cat.Kernel(ctx)
	if err != nil {
		return service.ImageInfo{}, err
	}
	say("initramfs")
	if _, err := a.cat.Initramfs(ctx, k, agent); err != nil {
		return service.ImageInfo{}, err
	}
	im, err := a.cat.Build(ctx, images.BuildOptions{OS: req.OS, SizeMiB: req.SizeMiB, Mirror: req.Mirror,
		RootfsTarball: req.RootfsTarball, NixOSModule: req.NixOSModule, AgentBinary: agent, Kernel: &k, Progress: say})
	if err != nil {
		return service.ImageInfo{}, err
	}
	return imageInfo(im), nil
}

func (a imageAdapter) RemoveImage(_ context.Context, ref string, inUse func(string) bool) ([]service.ImageInfo, error) {
	removed, err := a.cat.Remove(ref, func(im images.Image) bool { return inUse(im.Ref()) })
	out := make([]service.ImageInfo, 0, len(removed))
	for _, im := range removed {
		out = append(out, imageInfo(im))
	}
	return out, err
}
