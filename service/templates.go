package service

import (
	"context"
	"sort"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
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
	// Host is the cluster host (name or ID) to build it on; "" this host.
	Host string `json:"host,omitempty"`
}

func (s *Service) warmer() (engine.Warmer, error) {
	w, ok := s.Engine.(engine.Warmer)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this host keeps no warm templates")
	}
	return w, nil
}

// templateKeeper is the engine keeping the templates of host ref (a name
// or ID; "" is this host) and that host's name ("" when this host has no
// row: a single host).
func (s *Service) templateKeeper(ctx context.Context, ref string) (engine.TemplateKeeper, string, error) {
	if ref == "" {
		w, err := s.warmer()
		return w, s.localHostName(ctx), err
	}
	if !vm.IsID(ref) {
		if err := vm.ValidName("host", ref); err != nil {
			return nil, "", err
		}
	}
	h, err := hostByRef(ctx, s.DB, ref)
	if err != nil {
		return nil, "", err
	}
	if h.Local {
		w, err := s.warmer()
		return w, h.Name, err
	}
	switch {
	case h.State == store.HostJoining:
		return nil, "", errs.New(errs.FailedPrecondition, "host %s is still joining", h.Name)
	case unreachable(h, s.hostsConfig()):
		return nil, "", errs.New(errs.Unavailable, "host %s is unreachable", h.Name)
	}
	e, err := s.hostEngine(h)
	if err != nil {
		return nil, "", err
	}
	k, ok := e.(engine.TemplateKeeper)
	if !ok {
		return nil, "", errs.New(errs.FailedPrecondition, "host %s keeps no warm templates", h.Name)
	}
	return k, h.Name, nil
}

// localHostName is the name of this host's row, "" without one.
func (s *Service) localHostName(ctx context.Context) string {
	if h, err := store.GetLocalHost(ctx, s.DB); err == nil {
		return h.Name
	}
	return ""
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
	// Host is the name of the cluster host keeping it ("" on a single
	// host): a create restores it only there.
	Host string `json:"host,omitempty"`
}

func templateInfo(t engine.Template, host string) TemplateInfo {
	return TemplateInfo{Key: t.Key, Image: t.Image, CPUs: t.CPUs, MemoryMiB: t.MemoryMiB, DiskGiB: t.DiskGiB,
		CreatedAt: t.CreatedAt, BuildMillis: t.BuildMillis, Host: host}
}

// WarmImage builds the template of an image and shape now (unless it
// exists) on this host or host req.Host and returns it, telling progress
// each step of a build. Admins only; it blocks for a boot.
func (s *Service) WarmImage(ctx context.Context, c Caller, req WarmRequest, progress Progress) (TemplateInfo, error) {
	if err := requireAdmin(c, "warm images"); err != nil {
		return TemplateInfo{}, err
	}
	if req.CPUs < 0 || req.MemoryMiB < 0 || req.DiskGiB < 0 {
		return TemplateInfo{}, errs.New(errs.InvalidArgument, "warm image: cpus, memory and disk must be positive")
	}
	k, host, err := s.templateKeeper(ctx, req.Host)
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
	t, err := k.WarmTemplate(ctx, req.Image, req.CPUs, req.MemoryMiB, req.DiskGiB, progress)
	if err != nil {
		return TemplateInfo{}, err
	}
	return templateInfo(t, host), nil
}

// nodeTemplatesTimeout bounds how long a listing waits for each other
// host's templates.
const nodeTemplatesTimeout = 3 * time.Second

// templatesByImage are the warm templates kept under the state directory
// and on every other host connected and heard from, by image reference.
// A host that does not answer in time is left out of the listing.
func (s *Service) templatesByImage(ctx context.Context) map[string][]TemplateInfo {
	m := map[string][]TemplateInfo{}
	if s.cfg.StateDir != "" {
		if ts, err := engine.ReadTemplates(s.cfg.StateDir); err == nil {
			local := s.localHostName(ctx)
			for _, t := range ts {
				m[t.Image] = append(m[t.Image], templateInfo(t, local))
			}
		}
	}
	hosts, err := store.ListHosts(ctx, s.DB)
	if err != nil {
		return m
	}
	type answer struct {
		host string
		ts   []engine.Template
	}
	answers := make(chan answer, len(hosts))
	asked := 0
	for _, h := range hosts {
		if h.Local || h.State == store.HostJoining || unreachable(h, s.hostsConfig()) {
			continue
		}
		e, ok := s.remote(h.ID)
		k, keeps := e.(engine.TemplateKeeper)
		if !ok || !keeps {
			continue
		}
		asked++
		go func() {
			hctx, cancel := context.WithTimeout(ctx, nodeTemplatesTimeout)
			defer cancel()
			ts, err := k.Templates(hctx)
			if err != nil {
				s.log.Debug("list the templates of a host", "host", h.Name, "err", err)
			}
			answers <- answer{h.Name, ts}
		}()
	}
	for range asked {
		a := <-answers
		for _, t := range a.ts {
			m[t.Image] = append(m[t.Image], templateInfo(t, a.host))
		}
	}
	for ref := range m {
		sort.SliceStable(m[ref], func(i, j int) bool { return m[ref][i].Host < m[ref][j].Host })
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
