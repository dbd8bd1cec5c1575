package cli

import (
	"context"

	"github.com/minionsdev/minions/service"
)

// ImageBackend is the image part of a backend: the images that exist and
// the default (everyone signed in), building and removing them and setting
// the default (admins). Local and api.Client implement it; callers
// type-assert (like WebBackend), so other Backends need not.
type ImageBackend interface {
	ListImages(ctx context.Context) ([]service.ImageInfo, error)
	DefaultImage(ctx context.Context) (service.ImageDefault, error)
	SetDefaultImage(ctx context.Context, ref string) (service.ImageDefault, error)
	BuildImage(ctx context.Context, req service.ImageBuildRequest, progress service.Progress) (service.ImageInfo, error)
	RemoveImage(ctx context.Context, ref string) ([]service.ImageInfo, error)
}

var _ ImageBackend = (*Local)(nil)

func (l *Local) ListImages(ctx context.Context) ([]service.ImageInfo, error) {
	return l.Svc.ListImages(ctx, l.Caller)
}

func (l *Local) DefaultImage(ctx context.Context) (service.ImageDefault, error) {
	return l.Svc.DefaultImageInfo(ctx, l.Caller)
}

func (l *Local) SetDefaultImage(ctx context.Context, ref string) (service.ImageDefault, error) {
	return l.Svc.SetDefaultImage(ctx, l.Caller, ref)
}

func (l *Local) BuildImage(ctx context.Context, req service.ImageBuildRequest, p service.Progress) (service.ImageInfo, error) {
	return l.Svc.BuildImage(ctx, l.Caller, req, p)
}

func (l *Local) RemoveImage(ctx context.Context, ref string) ([]service.ImageInfo, error) {
	return l.Svc.RemoveImage(ctx, l.Caller, ref)
}
