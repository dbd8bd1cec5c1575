package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/disk"
	"golang.org/x/sys/unix"
)

// Operating systems Build knows.
const (
	OSMinimal = "minimal"
	OSDebian  = "debian"
	OSUbuntu  = "ubuntu"
	OSFedora  = "fedora"
	OSNixOS   = "nixos"
)

// Defaults.
const (
	DefaultMinimalSizeMiB = 1024
	DefaultDebianSizeMiB  = 5120
	DefaultDebianMirror   = "http://deb.debian.org/debian"
	DefaultDebianSuite    = "bookworm"
)

// DefaultImage is the image create uses when neither the default_image
// setting nor the config names one: minimal, which builds without a network.
const DefaultImage = OSMinimal

// AgentPath is where the agent binary lives in every root filesystem.
const AgentPath = "/usr/sbin/minions-agent"

// Image is one immutable version of a root filesystem.
type Image struct {
	OS            string    `json:"os"`
	Version       string    `json:"version"` // sortable: 20261127-001530-ab12
	Path          string    `json:"-"`       // raw ext4, mode 0444, never rewritten
	SizeBytes     int64     `json:"size_bytes"`
	Created       time.Time `json:"created"`
	AgentSHA256   string    `json:"agent_sha256"`
	KernelVersion string    `json:"kernel_version,omitempty"` // modules inside, "" if none
	BakedFrom     string    `json:"baked_from,omitempty"`     // version this one was baked from
	BuildSeconds  float64   `json:"build_seconds"`
}

// Ref is "os@version".
func (im Image) Ref() string { return im.OS + "@" + im.Version }

// BuildOptions says what to build.
type BuildOptions struct {
	OS      string // minimal | debian | ubuntu | fedora | nixos
	SizeMiB int    // apparent size of the image; 0: 1024 (minimal), 8192 (nixos), 5120 (other full OSes)
	// Mirror is the package archive: a Debian, Ubuntu or Fedora mirror
	// (http, https or file URL); "": DefaultDebianMirror,
	// DefaultUbuntuMirror, DefaultFedoraMirror. For nixos it is nixpkgs: a
	// directory, file: URL or http(s) tarball URL; "": the host's
	// <nixpkgs>, else DefaultNixpkgs. Not used by minimal.
	Mirror string
	// RootfsTarball (fedora only), if set, is a Fedora root filesystem tar
	// (Container or Cloud base, optionally compressed) to start from
	// instead of installing from scratch with the host's dnf.
	RootfsTarball string
	// NixOSModule (nixos only), if set, is a NixOS module file (a
	// configuration.nix) imported beside Minions' own configuration: the
	// user's packages, services and users.
	NixOSModule string
	AgentBinary string // path of the agent binary to install (required)
	// Kernel whose modules go into /lib/modules of full images; nil: the
	// catalogue's current kernel (EnsureKernel under Dir/kernels).
	Kernel *Kernel
	// Progress, if set, is called with a short description at each step.
	Progress func(step string)
}

// Catalog is the on-disk catalogue of kernels, initramfs files and
// versioned root filesystem images under Dir:
//
//	Dir/kernels/<kver>/             EnsureKernel
//	Dir/initramfs/initramfs-*.cpio  EnsureInitramfs
//	Dir/initramfs/agent-sha256.json agent binaries' sums by identity (agentSum)
//	Dir/rootfs/<os>/<version>/      rootfs.ext4 (0444) + image.json
//	Dir/cache/                      build caches (debootstrap)
//	Dir/tmp/                        builds in progress
//
// An image appears by renaming a finished directory into rootfs/, so a
// failed or cancelled build leaves nothing visible, and no published file is
// ever written again. Methods are safe for concurrent use, also from several
// processes sharing Dir.
type Catalog struct {
	Dir string       // required, absolute
	Log *slog.Logger // nil: discard
}

// Validate checks the configuration.
func (c *Catalog) Validate() error {
	if c.Dir == "" || !filepath.IsAbs(c.Dir) {
		return errs.New(errs.InvalidArgument, "image catalogue dir %q must be an absolute path", c.Dir)
	}
	return nil
}

func (c *Catalog) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c.Log.With("component", "images")
}

func (c *Catalog) rootfsDir() string { return filepath.Join(c.Dir, "rootfs") }

// KernelDir is where the catalogue keeps kernels.
func (c *Catalog) KernelDir() string { return filepath.Join(c.Dir, "kernels") }

// Kernel is EnsureKernel on the catalogue's kernel directory.
func (c *Catalog) Kernel(ctx context.Context) (Kernel, error) {
	return EnsureKernel(ctx, c.KernelDir())
}

// Initramfs is EnsureInitramfs on the catalogue's initramfs directory.
func (c *Catalog) Initramfs(ctx context.Context, k Kernel, agentBinary string) (Initramfs, error) {
	return EnsureInitramfs(ctx, filepath.Join(c.Dir, "initramfs"), k, agentBinary)
}

var osRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`) })
var versionRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9]{8}-[0-9]{6}-[0-9a-f]{4}$`) })

// ParseRef splits "os" or "os@version".
func ParseRef(ref string) (osName, version string, err error) {
	osName, version, _ = strings.Cut(ref, "@")
	if !osRe().MatchString(osName) {
		return "", "", errs.New(errs.InvalidArgument, "image ref %q: bad os name", ref)
	}
	if strings.Contains(ref, "@") && !versionRe().MatchString(version) {
		return "", "", errs.New(errs.InvalidArgument, "image ref %q: bad version (want YYYYMMDD-HHMMSS-xxxx)", ref)
	}
	return osName, version, nil
}

// List returns every image, ordered by OS then version (oldest first).
func (c *Catalog) List() ([]Image, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	osDirs, err := os.ReadDir(c.rootfsDir())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []Image
	for _, od := range osDirs {
		if !od.IsDir() || !osRe().MatchString(od.Name()) {
			continue
		}
		vdirs, err := os.ReadDir(filepath.Join(c.rootfsDir(), od.Name()))
		if err != nil {
			return nil, fmt.Errorf("list images: %w", err)
		}
		for _, vd := range vdirs {
			if !vd.IsDir() || !versionRe().MatchString(vd.Name()) {
				continue
			}
			im, err := c.load(od.Name(), vd.Name())
			if err != nil {
				c.log().Warn("skipping unreadable image", "os", od.Name(), "version", vd.Name(), "err", err)
				continue
			}
			out = append(out, im)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].OS != out[j].OS {
			return out[i].OS < out[j].OS
		}
		return out[i].Version < out[j].Version
	})
	return out, nil
}

func (c *Catalog) load(osName, version string) (Image, error) {
	d := filepath.Join(c.rootfsDir(), osName, version)
	b, err := os.ReadFile(filepath.Join(d, "image.json"))
	if err != nil {
		return Image{}, err
	}
	var im Image
	if err := json.Unmarshal(b, &im); err != nil {
		return Image{}, err
	}
	if im.OS != osName || im.Version != version {
		return Image{}, fmt.Errorf("image.json says %s, directory says %s@%s", im.Ref(), osName, version)
	}
	im.Path = filepath.Join(d, "rootfs.ext4")
	return im, nil
}

// Resolve returns the image ref names: "os" is its newest version,
// "os@version" that version. NotFound if there is none.
func (c *Catalog) Resolve(ref string) (Image, error) {
	osName, version, err := ParseRef(ref)
	if err != nil {
		return Image{}, err
	}
	if err := c.Validate(); err != nil {
		return Image{}, err
	}
	if version != "" {
		im, err := c.load(osName, version)
		if errors.Is(err, fs.ErrNotExist) {
			return Image{}, errs.New(errs.NotFound, "image %s not found", ref)
		}
		if err != nil {
			return Image{}, fmt.Errorf("resolve image %s: %w", ref, err)
		}
		return im, nil
	}
	all, err := c.List()
	if err != nil {
		return Image{}, err
	}
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].OS == osName {
			return all[i], nil
		}
	}
	return Image{}, errs.New(errs.NotFound, "no %s image (build one with: minions image build --os %s)", osName, osName)
}

// Remove deletes the image ref names: one version for "os@version", every
// version for "os". If inUse reports any of them in use, nothing is removed
// and the error is FailedPrecondition. It returns what it removed.
func (c *Catalog) Remove(ref string, inUse func(Image) bool) ([]Image, error) {
	osName, version, err := ParseRef(ref)
	if err != nil {
		return nil, err
	}
	var victims []Image
	if version != "" {
		im, err := c.Resolve(ref)
		if err != nil {
			return nil, err
		}
		victims = []Image{im}
	} else {
		all, err := c.List()
		if err != nil {
			return nil, err
		}
		for _, im := range all {
			if im.OS == osName {
				victims = append(victims, im)
			}
		}
		if len(victims) == 0 {
			return nil, errs.New(errs.NotFound, "no %s image", osName)
		}
	}
	if inUse != nil {
		for _, im := range victims {
			if inUse(im) {
				return nil, errs.New(errs.FailedPrecondition, "remove image %s: in use by a VM", im.Ref())
			}
		}
	}
	for i, im := range victims {
		// Move aside first so the image disappears atomically.
		d := filepath.Dir(im.Path)
		trash, err := newTempDir(c.tmpDir(), "rm-")
		if err == nil {
			err = os.Rename(d, filepath.Join(trash.Path, "img"))
			defer trash.Remove()
		}
		if err != nil {
			return victims[:i], fmt.Errorf("remove image %s: %w", im.Ref(), err)
		}
		c.log().Info("image removed", "image", im.Ref())
	}
	return victims, nil
}

func (c *Catalog) tmpDir() string {
	d := filepath.Join(c.Dir, "tmp")
	os.MkdirAll(d, 0o755)
	return d
}

// newVersion returns a sortable version for an image created at t.
func newVersion(t time.Time) string {
	t = t.UTC()
	// 4 hex digits from the sub-second time keep versions built within
	// the same second in order (16 µs resolution).
	return fmt.Sprintf("%s-%04x", t.Format("20060102-150405"), t.Nanosecond()>>14)
}

// publish moves a finished build directory (holding rootfs.ext4) into the
// catalogue under a fresh version, writing image.json first.
func (c *Catalog) publish(outDir string, im Image, started time.Time) (Image, error) {
	img := filepath.Join(outDir, "rootfs.ext4")
	if err := os.Chmod(img, FileMode); err != nil {
		return Image{}, err
	}
	st, err := os.Stat(img)
	if err != nil {
		return Image{}, err
	}
	im.SizeBytes = st.Size()
	parent := filepath.Join(c.rootfsDir(), im.OS)
	if err := os.MkdirAll(parent, DirMode); err != nil {
		return Image{}, err
	}
	for attempt := 0; ; attempt++ {
		now := time.Now()
		im.Created = now.UTC()
		im.Version = newVersion(now)
		im.BuildSeconds = now.Sub(started).Seconds()
		meta, _ := json.MarshalIndent(im, "", "  ")
		if err := os.WriteFile(filepath.Join(outDir, "image.json"), meta, FileMode); err != nil {
			return Image{}, err
		}
		err := unix.Renameat2(unix.AT_FDCWD, outDir, unix.AT_FDCWD, filepath.Join(parent, im.Version), unix.RENAME_NOREPLACE)
		if err == nil {
			break
		}
		os.Remove(filepath.Join(outDir, "image.json"))
		if !errors.Is(err, unix.EEXIST) || attempt > 100 {
			return Image{}, fmt.Errorf("publish image: %w", err)
		}
		time.Sleep(time.Millisecond)
	}
	im.Path = filepath.Join(parent, im.Version, "rootfs.ext4")
	c.log().Info("image published", "image", im.Ref(), "size_bytes", im.SizeBytes, "build_seconds", im.BuildSeconds)
	return im, nil
}

// Build builds a new image version. It never changes an existing image. On
// failure or cancellation nothing is left in the catalogue.
func (c *Catalog) Build(ctx context.Context, o BuildOptions) (Image, error) {
	if err := c.Validate(); err != nil {
		return Image{}, err
	}
	if o.AgentBinary == "" {
		return Image{}, errs.New(errs.InvalidArgument, "build image: agent binary is required")
	}
	if o.SizeMiB < 0 {
		return Image{}, errs.New(errs.InvalidArgument, "build image: negative size")
	}
	if o.NixOSModule != "" && o.OS != OSNixOS {
		return Image{}, errs.New(errs.InvalidArgument, "build image: --nixos-config is for nixos only")
	}
	progress := func(step string) {
		c.log().Info("image build", "os", o.OS, "step", step)
		if o.Progress != nil {
			o.Progress(step)
		}
	}
	switch o.OS {
	case OSMinimal:
		return c.buildMinimal(ctx, o, progress)
	case OSDebian:
		return c.buildDebian(ctx, o, progress)
	case OSUbuntu:
		return c.buildUbuntu(ctx, o, progress)
	case OSFedora:
		return c.buildFedora(ctx, o, progress)
	case OSNixOS:
		return c.buildNixOS(ctx, o, progress)
	default:
		return Image{}, errs.New(errs.InvalidArgument, "build image: unknown os %q (want minimal, debian, ubuntu, fedora or nixos)", o.OS)
	}
}

// buildKernel is the kernel whose modules a full image carries:
// o.Kernel, else the catalogue's current one (installed if needed).
func (c *Catalog) buildKernel(ctx context.Context, o BuildOptions, progress func(string)) (*Kernel, error) {
	if o.Kernel != nil {
		return o.Kernel, nil
	}
	progress("kernel")
	k, err := c.Kernel(ctx)
	if err != nil {
		return nil, err
	}
	return &k, nil
}

// buildDir makes a private, locked directory for one build under Dir/tmp;
// the caller removes it.
func (c *Catalog) buildDir(osName string) (*tempDir, error) {
	d, err := newTempDir(c.tmpDir(), "build-"+osName+"-")
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	return d, nil
}

// Bake makes a new version of the image ref names with agentBinary as its
// agent. The source image is not touched: the new one starts as a clone
// (reflink where the filesystem can) and the agent is replaced in place
// with debugfs, so nothing is mounted.
func (c *Catalog) Bake(ctx context.Context, ref, agentBinary string) (Image, error) {
	src, err := c.Resolve(ref)
	if err != nil {
		return Image{}, err
	}
	started := time.Now()
	sum, err := fileSHA256(agentBinary)
	if err != nil {
		return Image{}, fmt.Errorf("bake %s: agent: %w", ref, err)
	}
	td, err := c.buildDir(src.OS)
	if err != nil {
		return Image{}, err
	}
	defer td.Remove()
	out := filepath.Join(td.Path, "out")
	if err := os.Mkdir(out, 0o755); err != nil {
		return Image{}, err
	}
	img := filepath.Join(out, "rootfs.ext4")
	if _, err := disk.Clone(ctx, src.Path, img); err != nil {
		return Image{}, fmt.Errorf("bake %s: %w", src.Ref(), err)
	}
	if err := os.Chmod(img, 0o644); err != nil {
		return Image{}, err
	}
	if err := injectFile(ctx, img, agentBinary, AgentPath, 0o755); err != nil {
		return Image{}, fmt.Errorf("bake %s: %w", src.Ref(), err)
	}
	im := Image{OS: src.OS, AgentSHA256: sum, KernelVersion: src.KernelVersion, BakedFrom: src.Version}
	return c.publish(out, im, started)
}

// injectFile replaces (or creates) the file dst inside the ext4 image img
// with the host file src, owned by root with mode perm, using debugfs, and
// reads it back to check.
func injectFile(ctx context.Context, img, src, dst string, perm os.FileMode) error {
	work, err := os.MkdirTemp(filepath.Dir(img), ".inject-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	if err := copyFile(src, filepath.Join(work, "payload"), 0o644); err != nil {
		return err
	}
	dir, base := filepath.Dir(dst), filepath.Base(dst)
	script := fmt.Sprintf("cd %s\nrm %s\nwrite payload %s\nsif %s mode 0%o\nsif %s uid 0\nsif %s gid 0\n",
		dir, base, base, base, 0o100000|uint32(perm), base, base)
	if err := os.WriteFile(filepath.Join(work, "cmds"), []byte(script), 0o644); err != nil {
		return err
	}
	if _, err := run(ctx, work, "debugfs", "-w", "-f", "cmds", img); err != nil {
		return fmt.Errorf("inject %s: %w", dst, err)
	}
	if _, err := run(ctx, work, "debugfs", "-R", "dump "+dst+" readback", img); err != nil {
		return fmt.Errorf("inject %s: read back: %w", dst, err)
	}
	want, err := fileSHA256(src)
	if err != nil {
		return err
	}
	got, err := fileSHA256(filepath.Join(work, "readback"))
	if err != nil || got != want {
		return fmt.Errorf("inject %s: content read back from the image differs", dst)
	}
	return nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", errs.New(errs.NotFound, "%s does not exist", p)
		}
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, perm)
}
