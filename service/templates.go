package service

import (
	"context"
	"time"

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

// TemplateInfo is a warm template as `image warm`, `image list` and the
// API show it (engine.Template without the host's paths).
type TemplateInfo struct {
	Key       string    `json:"key"`
	Image     string    `json:"image"` // "os@version"
	CPUs      int       `json:"cpus"`
	MemoryMiB int       `json:"memory_mib"`
	DiskGiB   int       `json:"disk_gib"`
	CreatedAt time.Time `json:"created_at"`
	// BuildMillis is how long the build took (boot to ready, and save).
	BuildMillis int64 `json:"build_ms"`
}

func templateInfo(t engine.Template) TemplateInfo {
	return TemplateInfo{Key: t.Key, Image: t.Image, CPUs: t.CPUs, MemoryMiB: t.MemoryMiB, DiskGiB: t.DiskGiB,
		CreatedAt: t.CreatedAt, BuildMillis: t.BuildMillis}
}

// WarmImage builds the template of an image and shape now (unless it
// exists) and returns it, telling progress each step of a build. Admins
// only; it blocks for a boot.
func (s *Service) WarmImage(ctx context.Context, c Caller, req WarmRequest, progress Progress) (TemplateInfo, error) {
	if err := requireAdmin(c, "warm images"); err != nil {
		return TemplateInfo{}, err
	}
	if req.CPUs < 0 || req.MemoryMiB < 0 || req.DiskGiB < 0 {
		return TemplateInfo{}, errs.New(errs.InvalidArgument, "warm image: cpus, memory and disk must be positive")
	}
	w, err := s.warmer()
	if err != nil {
		return TemplateInfo{}, err
	}
	if req.Image == "" {
		if req.Image, err = s.DefaultImage(ctx); err != nil {
			return TemplateInfo{}, err
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
	t, err := w.WarmTemplate(ctx, req.Image, req.CPUs, req.MemoryMiB, req.DiskGiB, progress)
	if err != nil {
		return TemplateInfo{}, err
	}
	return templateInfo(t), nil
}

// templatesByImage are the warm templates kept under the state
// directory, by image reference.
func (s *Service) templatesByImage() map[string][]TemplateInfo {
	if s.cfg.StateDir == "" {
		return nil
	}
	ts, err := engine.ReadTemplates(s.cfg.StateDir)
	if err != nil {
		return nil
	}
	m := map[string][]TemplateInfo{}
	for _, t := range ts {
		m[t.Image] = append(m[t.Image], templateInfo(t))
	}
	return m
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
func (b *Bound) WarmImage(ctx context.Context, req WarmRequest, progress Progress) (TemplateInfo, error) {
	return b.s.WarmImage(ctx, b.c, req, progress)
}
