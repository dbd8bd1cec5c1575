package service

import (
	"context"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// Warm templates (docs/templates.md): creates of an image version and
// shape restore from a template of it, when the engine keeps them
// (engine.Warmer: the local engine, unless no_warm is set).

// WarmRequest asks for the template of an image and shape.
type WarmRequest struct {
	Image     string `json:"image"`                // "os" or "os@version"; "" the default image
	CPUs      int    `json:"cpus,omitempty"`       // 0: the create default
	MemoryMiB int    `json:"memory_mib,omitempty"` // 0: the create default
	DiskGiB   int    `json:"disk_gib,omitempty"`   // 0: the create default for the image
}

func (s *Service) warmer() (engine.Warmer, error) {
	w, ok := s.Engine.(engine.Warmer)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this host keeps no warm templates")
	}
	return w, nil
}

// WarmImage builds the template of an image and shape now (unless it
// exists) and returns it. Admins only; it blocks for a boot.
func (s *Service) WarmImage(ctx context.Context, c Caller, req WarmRequest) (engine.Template, error) {
	if err := requireAdmin(c, "warm images"); err != nil {
		return engine.Template{}, err
	}
	w, err := s.warmer()
	if err != nil {
		return engine.Template{}, err
	}
	if req.Image == "" {
		if req.Image, err = s.DefaultImage(ctx); err != nil {
			return engine.Template{}, err
		}
	}
	if req.CPUs == 0 {
		req.CPUs = s.cfg.DefaultCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = s.cfg.DefaultMemoryMiB
	}
	if req.DiskGiB == 0 {
		req.DiskGiB = s.defaultDisk(ctx, req.Image)
	}
	return w.WarmTemplate(ctx, req.Image, req.CPUs, req.MemoryMiB, req.DiskGiB)
}

// Templates lists the warm templates of this host (empty when it keeps
// none). Any signed-in user.
func (s *Service) Templates(ctx context.Context, c Caller) ([]engine.Template, error) {
	if err := requireUser(c, "list templates"); err != nil {
		return nil, err
	}
	w, err := s.warmer()
	if err != nil {
		return []engine.Template{}, nil
	}
	return w.Templates(ctx)
}

// KeepWarm is the daemon's periodic housekeeping of templates: templates
// whose image version no longer resolves to the same file (removed or
// rebuilt) are dropped, and the template of the default image in the
// default shape is built in the background when missing (after an image
// build or a change of the default).
func (s *Service) KeepWarm(ctx context.Context) { s.keepWarm(ctx, true) }

// KeepNodeWarm is KeepWarm on a node, whose images come from the control
// plane when a create needs them: it drops the templates of removed or
// rebuilt images but builds none of the default image by itself (that
// would fetch the image); the engine builds the template of a shape in
// the background after its first cold create here.
func (s *Service) KeepNodeWarm(ctx context.Context) { s.keepWarm(ctx, false) }

func (s *Service) keepWarm(ctx context.Context, warmDefault bool) {
	w, ok := s.Engine.(engine.Warmer)
	if !ok {
		return
	}
	if ts, err := w.Templates(ctx); err == nil {
		for _, t := range ts {
			if img, err := s.Images.Resolve(ctx, t.Image); err != nil || img.Path != t.ImagePath {
				s.log.Info("dropping the template of a removed or rebuilt image", "image", t.Image, "key", t.Key)
				w.DropTemplates(ctx, t.Image)
			}
		}
	}
	if !warmDefault {
		return
	}
	ref, err := s.DefaultImage(ctx)
	if err != nil {
		return
	}
	w.WarmLater(ctx, ref, s.cfg.DefaultCPUs, s.cfg.DefaultMemoryMiB, s.defaultDisk(ctx, ref))
}

// defaultDisk is the disk size a create of image ref without --disk gets
// (as the engine computes it): the default, or the image's size rounded
// up to whole GiB when larger.
func (s *Service) defaultDisk(ctx context.Context, ref string) int {
	disk := max(1, s.cfg.DefaultDiskGiB)
	if img, err := s.Images.Resolve(ctx, ref); err == nil {
		disk = max(disk, int((img.SizeBytes+1<<30-1)>>30))
	}
	return disk
}

// WarmImage is Service.WarmImage for the bound caller.
func (b *Bound) WarmImage(ctx context.Context, req WarmRequest) (engine.Template, error) {
	return b.s.WarmImage(ctx, b.c, req)
}

// Templates is Service.Templates for the bound caller.
func (b *Bound) Templates(ctx context.Context) ([]engine.Template, error) {
	return b.s.Templates(ctx, b.c)
}
