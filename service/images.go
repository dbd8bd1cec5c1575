package service

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/cpus"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
)

// ImageInfo is the public view of one built image version.
type ImageInfo struct {
	Ref           string    `json:"ref"` // "debian@20261127-001530-ab12"
	OS            string    `json:"os"`
	Version       string    `json:"version"`
	SizeBytes     int64     `json:"size_bytes"`
	Created       time.Time `json:"created"`
	KernelVersion string    `json:"kernel_version,omitempty"`
	// AgentSHA256 is the guest agent baked in; BuildSeconds how long the
	// build took.
	AgentSHA256  string  `json:"agent_sha256,omitempty"`
	BuildSeconds float64 `json:"build_seconds,omitempty"`
	// Path is the root filesystem on the host: shown to admins only.
	Path string `json:"path,omitempty"`
	// Default is set on the version a create without an image uses now.
	Default bool `json:"default"`
	// Templates are this version's warm templates on the host that
	// answers and on the cluster's other hosts it reaches (by host, then
	// shape; `image warm`).
	Templates []TemplateInfo `json:"templates,omitempty"`
}

// ImageDefault is the image create uses without one, and where that
// choice comes from (see DefaultImageFor).
type ImageDefault struct {
	Image  string `json:"image"`  // as chosen: "debian" or "debian@version"
	Source string `json:"source"` // "setting", "config" or "built-in"
	// ResolvesTo is the version Image names now; "" when none is built.
	ResolvesTo string `json:"resolves_to,omitempty"`
}

// ImageBuildRequest asks for a new image version.
type ImageBuildRequest struct {
	OS      string `json:"os"`                 // minimal, debian, ubuntu, fedora, nixos
	SizeMiB int    `json:"size_mib,omitempty"` // 0: the builder's default
	Mirror  string `json:"mirror,omitempty"`   // "": the distribution's archive
	// RootfsTarball (fedora: start from this root filesystem tar) and
	// NixOSModule (nixos: a configuration.nix imported beside Minions'
	// own) name files on the host. They never travel over the API (a
	// remote caller cannot make the daemon read host files): only an
	// in-process caller on the host sets them.
	RootfsTarball string `json:"-"`
	NixOSModule   string `json:"-"`
}

// ImageCatalog is what Images implementations that manage a catalogue
// (the daemon's, over images/) offer besides Resolve: listing, building
// and removing versions. The service checks who asks; these do not.
// Without it the service lists no images and cannot build or remove any.
type ImageCatalog interface {
	// ListImages returns every version, ordered by OS then version
	// (oldest first); Default is not set.
	ListImages(ctx context.Context) ([]ImageInfo, error)
	// BuildImage builds a new version (and the guest kernel if none is
	// installed), reporting each step to progress (which may be nil).
	BuildImage(ctx context.Context, req ImageBuildRequest, progress Progress) (ImageInfo, error)
	// RemoveImage removes one version ("os@version") or every version
	// ("os") and returns what it removed. If inUse reports any of them,
	// nothing is removed and the error is errs.FailedPrecondition.
	RemoveImage(ctx context.Context, ref string, inUse func(ref string) bool) ([]ImageInfo, error)
}

var imageOSRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`) })

// maxImageMiB bounds a requested image size (1 TiB).
const maxImageMiB = 1 << 20

func (s *Service) catalog() (ImageCatalog, error) {
	if c, ok := s.Images.(ImageCatalog); ok {
		return c, nil
	}
	return nil, errs.New(errs.Unavailable, "this host has no image catalogue")
}

// requireUser fails with errs.Unauthenticated for an anonymous caller.
func requireUser(c Caller, what string) error {
	if c.UserID == "" && !c.Admin {
		return errs.New(errs.Unauthenticated, "sign in to %s", what)
	}
	return nil
}

// ListImages lists the built images, marking the one a create without an
// image uses. Any signed-in user may list them (the create form offers
// them).
func (s *Service) ListImages(ctx context.Context, c Caller) ([]ImageInfo, error) {
	if err := requireUser(c, "list images"); err != nil {
		return nil, err
	}
	cat, ok := s.Images.(ImageCatalog)
	if !ok {
		return []ImageInfo{}, nil
	}
	ims, err := cat.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	ref, _, err := DefaultImageFor(ctx, s.DB, s.cfg.DefaultImage)
	if err != nil {
		return nil, err
	}
	def := resolveIn(ims, ref)
	tpls := s.templatesByImage(ctx)
	for i := range ims {
		ims[i].Default = def != "" && ims[i].Ref == def
		ims[i].Templates = tpls[ims[i].Ref]
		if !c.Admin {
			ims[i].Path = ""
		}
	}
	if ims == nil {
		ims = []ImageInfo{}
	}
	return ims, nil
}

// resolveIn is the version ref names among ims (ordered oldest first per
// OS): "os" is the newest of that OS. "" if none.
func resolveIn(ims []ImageInfo, ref string) string {
	osName, version, _ := strings.Cut(ref, "@")
	for i := len(ims) - 1; i >= 0; i-- {
		if ims[i].OS == osName && (version == "" || ims[i].Version == version) {
			return ims[i].Ref
		}
	}
	return ""
}

// DefaultImageInfo returns the image a create without one uses, where that
// choice comes from and the version it names now. Any signed-in user.
func (s *Service) DefaultImageInfo(ctx context.Context, c Caller) (ImageDefault, error) {
	if err := requireUser(c, "see the default image"); err != nil {
		return ImageDefault{}, err
	}
	return s.imageDefault(ctx)
}

func (s *Service) imageDefault(ctx context.Context) (ImageDefault, error) {
	ref, source, err := DefaultImageFor(ctx, s.DB, s.cfg.DefaultImage)
	if err != nil {
		return ImageDefault{}, err
	}
	d := ImageDefault{Image: ref, Source: source}
	if cat, ok := s.Images.(ImageCatalog); ok {
		if ims, err := cat.ListImages(ctx); err == nil {
			d.ResolvesTo = resolveIn(ims, ref)
		}
	}
	return d, nil
}

// SetDefaultImage makes ref ("os" or "os@version", which must be built)
// the image creates use without one; "" goes back to the configured
// default. Admins only; nothing changes on error.
func (s *Service) SetDefaultImage(ctx context.Context, c Caller, ref string) (ImageDefault, error) {
	if err := requireAdmin(c, "set the default image"); err != nil {
		return ImageDefault{}, err
	}
	if ref != "" {
		cat, err := s.catalog()
		if err != nil {
			return ImageDefault{}, err
		}
		osName, _, _ := strings.Cut(ref, "@")
		if !imageOSRe().MatchString(osName) {
			return ImageDefault{}, errs.New(errs.InvalidArgument, "image %q: bad name", ref)
		}
		ims, err := cat.ListImages(ctx)
		if err != nil {
			return ImageDefault{}, err
		}
		if resolveIn(ims, ref) == "" {
			return ImageDefault{}, errs.New(errs.NotFound, "no image %s is built", ref)
		}
	}
	if err := s.DB.Tx(ctx, func(q store.Q) error { return store.SetSetting(ctx, q, SettingDefaultImage, ref) }); err != nil {
		return ImageDefault{}, err
	}
	s.log.Info("default image set", "user", c.Name, "image", ref)
	return s.imageDefault(ctx)
}

// BuildImage builds a new version of an image. Admins only. It blocks
// until the build ends (minutes for a full OS), reporting each step to
// progress.
func (s *Service) BuildImage(ctx context.Context, c Caller, req ImageBuildRequest, progress Progress) (ImageInfo, error) {
	defer cpus.Hold("image build")() // CPU-heavy: the process gets its default Ps (internal/cpus)
	if err := requireAdmin(c, "build images"); err != nil {
		return ImageInfo{}, err
	}
	if !imageOSRe().MatchString(req.OS) {
		return ImageInfo{}, errs.New(errs.InvalidArgument, "image os %q: want minimal, debian, ubuntu, fedora or nixos", req.OS)
	}
	if req.SizeMiB < 0 || req.SizeMiB > maxImageMiB {
		return ImageInfo{}, errs.New(errs.InvalidArgument, "image size %d MiB: want 0 (default) to %d", req.SizeMiB, maxImageMiB)
	}
	cat, err := s.catalog()
	if err != nil {
		return ImageInfo{}, err
	}
	if err := engine.CheckFreeSpace(s.cfg.StateDir, "build image "+req.OS, engine.ReserveBytes); err != nil {
		return ImageInfo{}, err
	}
	start := time.Now()
	im, err := cat.BuildImage(ctx, req, progress)
	if err != nil {
		return ImageInfo{}, errs.DiskFull(err, s.cfg.StateDir)
	}
	s.log.Info("image built", "user", c.Name, "image", im.Ref, "ms", time.Since(start).Milliseconds())
	return im, nil
}

// RemoveImage removes one version ("os@version") or every version ("os")
// of an image. Admins only. It refuses (errs.FailedPrecondition, nothing
// removed) while a VM's disk is based on one of them.
func (s *Service) RemoveImage(ctx context.Context, c Caller, ref string) ([]ImageInfo, error) {
	if err := requireAdmin(c, "remove images"); err != nil {
		return nil, err
	}
	if osName, _, _ := strings.Cut(ref, "@"); !imageOSRe().MatchString(osName) {
		return nil, errs.New(errs.InvalidArgument, "image %q: bad name", ref)
	}
	cat, err := s.catalog()
	if err != nil {
		return nil, err
	}
	vms, err := store.ListVMs(ctx, s.DB, "")
	if err != nil {
		return nil, err
	}
	used := map[string]string{}
	for _, v := range vms {
		used[v.Image] = v.Name
	}
	removed, err := cat.RemoveImage(ctx, ref, func(r string) bool { return used[r] != "" })
	if errors.Is(err, errs.FailedPrecondition) {
		for r, vm := range used {
			if r == ref || strings.HasPrefix(r, ref+"@") {
				return nil, errs.New(errs.FailedPrecondition, "remove image %s: vm %s uses %s", ref, vm, r)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("image removed", "user", c.Name, "image", ref, "versions", len(removed))
	return removed, nil
}
