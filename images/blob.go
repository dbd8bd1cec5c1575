package images

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/sync/singleflight"
	"golang.org/x/sys/unix"
)

// Images and kernels travel between hosts by checksum (issue 14): the
// control plane describes what a ref means as a Manifest (every file with
// its SHA-256), a node fetches the files it lacks by checksum, verifies
// each and installs the whole set with one rename (Receive), so a catalogue
// never shows a partial or corrupt image or kernel.

// Manifest kinds.
const (
	KindImage  = "image"  // Name is "os@version"; files image.json and rootfs.ext4
	KindKernel = "kernel" // Name is the kernel version; files kernel.json, vmlinuz, ...
)

// Manifest is what a node needs of an image version or a kernel.
type Manifest struct {
	Kind  string     `json:"kind"`
	Name  string     `json:"name"`
	Files []BlobFile `json:"files"`
}

// BlobFile is one file of a Manifest.
type BlobFile struct {
	Path   string `json:"path"`   // relative, slash-separated
	SHA256 string `json:"sha256"` // hex
	Size   int64  `json:"size"`
	Mode   uint32 `json:"mode"` // permission bits (0444, 0644, 0755)
}

// Bundle is what a ref means on the control plane: the image and the
// kernel it boots with.
type Bundle struct {
	Image  Manifest  `json:"image"`
	Kernel *Manifest `json:"kernel,omitempty"`
}

var (
	sha256Re     = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{64}$`) })
	kernelNameRe = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._+-]{0,127}$`) })
)

// ValidSHA256 reports whether s is a lowercase hex SHA-256.
func ValidSHA256(s string) bool { return sha256Re().MatchString(s) }

// FileSHA256 returns the SHA-256 (hex) and size of the file at p. The sum
// of a file of 1 MiB or more is cached beside it in ".<name>.sha256"
// (kept while its size and modification time match), so a published
// image is read once however often it is fetched. Holes are hashed as the
// zeros they read as, without reading them.
func FileSHA256(p string) (string, int64, error) {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", 0, errs.New(errs.NotFound, "%s does not exist", p)
		}
		return "", 0, err
	}
	if !st.Mode().IsRegular() {
		return "", 0, errs.New(errs.InvalidArgument, "%s is not a regular file", p)
	}
	stamp := fmt.Sprintf("%d %d", st.Size(), st.ModTime().UnixNano())
	side := filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".sha256")
	cache := st.Size() >= 1<<20
	if cache {
		if b, err := os.ReadFile(side); err == nil {
			sum, rest, _ := strings.Cut(strings.TrimSpace(string(b)), " ")
			if rest == stamp && ValidSHA256(sum) {
				return sum, st.Size(), nil
			}
		}
	}
	// Concurrent first requests for one file (several nodes fetching a
	// new image) hash it once.
	v, err, _ := sumGroup.Do(p+"\x00"+stamp, func() (any, error) {
		f, err := os.Open(p)
		if err != nil {
			return "", err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := hashSparse(h, f, st.Size()); err != nil {
			return "", fmt.Errorf("checksum %s: %w", p, err)
		}
		sum := hex.EncodeToString(h.Sum(nil))
		if cache {
			_ = writeFileAtomic(side, []byte(sum+" "+stamp+"\n"), 0o644) // best effort
		}
		return sum, nil
	})
	if err != nil {
		return "", 0, err
	}
	return v.(string), st.Size(), nil
}

var sumGroup singleflight.Group

// extents returns the data extents of f (size bytes) in order: [start,
// end) pairs. A filesystem without SEEK_DATA yields the whole file.
func extents(f *os.File, size int64) ([][2]int64, error) {
	var out [][2]int64
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole up to the end
		}
		if err != nil {
			return [][2]int64{{0, size}}, nil
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return [][2]int64{{0, size}}, nil
		}
		if h > size {
			h = size
		}
		out = append(out, [2]int64{d, h})
		off = h
	}
	return out, nil
}

// zeros is a read-only buffer of zero bytes, made on first use (not at
// package init: every CLI command would pay for it).
var zeros = sync.OnceValue(func() []byte { return make([]byte, 1<<20) })

// writeZeros writes n zero bytes to w.
func writeZeros(w io.Writer, n int64) error {
	z := zeros()
	for n > 0 {
		k := min(n, int64(len(z)))
		if _, err := w.Write(z[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

func hashSparse(h io.Writer, f *os.File, size int64) (int64, error) {
	ext, err := extents(f, size)
	if err != nil {
		return 0, err
	}
	pos := int64(0)
	for _, e := range ext {
		if err := writeZeros(h, e[0]-pos); err != nil {
			return 0, err
		}
		if _, err := io.Copy(h, io.NewSectionReader(f, e[0], e[1]-e[0])); err != nil {
			return 0, err
		}
		pos = e[1]
	}
	return size, writeZeros(h, size-pos)
}

// The sparse transfer encoding (SparseContentType): a header of 8 bytes
// SparseMagic and the file's size (uint64, big endian), then frames of
// offset and length (uint64 each) followed by length bytes of data, in
// increasing offset order, ended by a frame (size, 0). What no frame
// covers is a hole (zeros). A 1 GiB minimal image with ~11 MB of data
// crosses the wire as ~11 MB.
const (
	SparseContentType = "application/vnd.minions.sparse"
	SparseMagic       = "MNSPARS1"
)

func be64(b []byte, v int64) {
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
}

func rd64(b []byte) int64 {
	var v uint64
	for _, c := range b[:8] {
		v = v<<8 | uint64(c)
	}
	return int64(v)
}

// WriteSparse writes the file at p to w in the sparse transfer encoding
// and returns the data bytes sent.
func WriteSparse(w io.Writer, p string) (int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	ext, err := extents(f, st.Size())
	if err != nil {
		return 0, err
	}
	hdr := make([]byte, 16)
	copy(hdr, SparseMagic)
	be64(hdr[8:], st.Size())
	if _, err := w.Write(hdr); err != nil {
		return 0, err
	}
	var sent int64
	for _, e := range ext {
		be64(hdr, e[0])
		be64(hdr[8:], e[1]-e[0])
		if _, err := w.Write(hdr); err != nil {
			return sent, err
		}
		n, err := io.Copy(w, io.NewSectionReader(f, e[0], e[1]-e[0]))
		sent += n
		if err != nil {
			return sent, err
		}
		if n != e[1]-e[0] {
			return sent, fmt.Errorf("%s changed while sent", p)
		}
	}
	be64(hdr, st.Size())
	be64(hdr[8:], 0)
	_, err = w.Write(hdr)
	return sent, err
}

// readSparse reads the sparse encoding of a file of want bytes from r
// into f (empty, truncated here to its size: holes stay holes), writing
// the file's bytes, holes as zeros, to h.
func readSparse(r io.Reader, f *os.File, want int64, h io.Writer) error {
	hdr := make([]byte, 16)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return fmt.Errorf("sparse header: %w", err)
	}
	if string(hdr[:8]) != SparseMagic {
		return errors.New("not the sparse encoding")
	}
	if size := rd64(hdr[8:]); size != want {
		return fmt.Errorf("size %d, want %d", size, want)
	}
	if err := f.Truncate(want); err != nil {
		return err
	}
	pos := int64(0)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			return fmt.Errorf("sparse frame: %w", err)
		}
		off, n := rd64(hdr), rd64(hdr[8:])
		if off < pos || n < 0 || off > want || n > want-off {
			return fmt.Errorf("sparse frame [%d,+%d) out of order or beyond %d", off, n, want)
		}
		if err := writeZeros(h, off-pos); err != nil {
			return err
		}
		if n == 0 {
			if off != want {
				return fmt.Errorf("sparse stream ends at %d of %d", off, want)
			}
			return nil
		}
		got, err := io.CopyN(io.MultiWriter(io.NewOffsetWriter(f, off), h), r, n)
		if err != nil {
			return fmt.Errorf("sparse data at %d (%d of %d bytes): %w", off, got, n, err)
		}
		pos = off + n
	}
}

// ImageManifest describes image ref (resolved: "os" is its newest
// version) by checksum.
func (c *Catalog) ImageManifest(ref string) (Manifest, error) {
	im, err := c.Resolve(ref)
	if err != nil {
		return Manifest{}, err
	}
	dir := filepath.Dir(im.Path)
	m := Manifest{Kind: KindImage, Name: im.Ref()}
	for _, f := range []string{"image.json", "rootfs.ext4"} {
		bf, err := blobFile(dir, f, uint32(FileMode))
		if err != nil {
			return Manifest{}, fmt.Errorf("image %s: %w", im.Ref(), err)
		}
		m.Files = append(m.Files, bf)
	}
	return m, nil
}

// KernelManifest describes installed kernel version (NewestKernel's
// Version, say) by checksum: what a node needs to boot it and to build
// its initramfs (kernel.json, vmlinuz, vmlinux and config where present,
// modules.dep and the InitramfsModules with their dependencies). Full
// images carry their own modules tree.
func (c *Catalog) KernelManifest(version string) (Manifest, error) {
	k, err := LoadKernel(c.KernelDir(), version)
	if err != nil {
		return Manifest{}, err
	}
	dir := filepath.Join(c.KernelDir(), k.Version)
	files := []string{"kernel.json", "vmlinuz"}
	for _, opt := range []string{"vmlinux", "config"} {
		if _, err := os.Stat(filepath.Join(dir, opt)); err == nil {
			files = append(files, opt)
		}
	}
	files = append(files, "modules/modules.dep")
	deps, err := ReadModulesDep(k.ModulesDir)
	if err != nil {
		return Manifest{}, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	mods, err := deps.LoadOrder(InitramfsModules)
	if err != nil {
		return Manifest{}, fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	for _, m := range mods {
		files = append(files, "modules/"+m)
	}
	m := Manifest{Kind: KindKernel, Name: k.Version}
	for _, f := range files {
		bf, err := blobFile(dir, f, 0o644)
		if err != nil {
			return Manifest{}, fmt.Errorf("kernel %s: %w", k.Version, err)
		}
		m.Files = append(m.Files, bf)
	}
	return m, nil
}

func blobFile(dir, rel string, mode uint32) (BlobFile, error) {
	if !validRel(rel) {
		return BlobFile{}, fmt.Errorf("file %q: not a plain relative path", rel)
	}
	sum, size, err := FileSHA256(filepath.Join(dir, filepath.FromSlash(rel)))
	if err != nil {
		return BlobFile{}, err
	}
	return BlobFile{Path: rel, SHA256: sum, Size: size, Mode: mode}, nil
}

func validRel(p string) bool {
	return p != "" && !strings.HasPrefix(p, "/") && path.Clean(p) == p && p != "." && !strings.HasPrefix(p, "../") && p != ".." &&
		!strings.Contains(p, "\\") && !strings.ContainsRune(p, 0)
}

// Validate checks a manifest from elsewhere: a known kind, a name that is
// a full image ref or a plain kernel version, plain relative paths once
// each, checksums, sizes and the files the kind needs.
func (m Manifest) Validate() error {
	bad := func(f string, a ...any) error {
		return errs.New(errs.InvalidArgument, "manifest %s %q: "+f, append([]any{m.Kind, m.Name}, a...)...)
	}
	need := map[string]bool{}
	switch m.Kind {
	case KindImage:
		if _, v, err := ParseRef(m.Name); err != nil || v == "" {
			return bad("want os@version")
		}
		need["image.json"], need["rootfs.ext4"] = true, true
	case KindKernel:
		if !kernelNameRe().MatchString(m.Name) {
			return bad("bad kernel version")
		}
		need["kernel.json"], need["vmlinuz"], need["modules/modules.dep"] = true, true, true
	default:
		return bad("unknown kind")
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if !validRel(f.Path) || seen[f.Path] {
			return bad("file %q: not a plain relative path, or listed twice", f.Path)
		}
		if !ValidSHA256(f.SHA256) || f.Size < 0 || f.Mode&^0o755 != 0 {
			return bad("file %q: bad checksum, size or mode", f.Path)
		}
		seen[f.Path] = true
		delete(need, f.Path)
	}
	for p := range need {
		return bad("%s missing", p)
	}
	return nil
}

// installedDir is where manifest m lives in the catalogue.
func (c *Catalog) installedDir(m Manifest) string {
	if m.Kind == KindKernel {
		return filepath.Join(c.KernelDir(), m.Name)
	}
	osName, version, _ := ParseRef(m.Name)
	return filepath.Join(c.rootfsDir(), osName, version)
}

// Has reports whether what m describes is installed.
func (c *Catalog) Has(m Manifest) bool {
	if m.Kind == KindKernel {
		_, err := LoadKernel(c.KernelDir(), m.Name)
		return err == nil
	}
	_, err := c.Resolve(m.Name)
	return err == nil
}

// BlobOpener opens file f of a manifest for Receive: its bytes, or with
// sparse its sparse transfer encoding. The caller closes the reader.
type BlobOpener func(ctx context.Context, f BlobFile) (r io.ReadCloser, sparse bool, err error)

// ErrCorrupt is the class-less cause wrapped in a refused download (a
// checksum or size that differs from the manifest's).
var ErrCorrupt = errors.New("checksum mismatch")

// Receive installs what m describes from the files open yields, unless it
// is installed already. Each file is written in a private directory under
// Dir/tmp (holes kept), checked against its size and SHA-256 and synced;
// then the whole directory is renamed into place (never over an existing
// one: a concurrent receiver that got there first wins, which is fine, as
// both hold the same checksums). A failed, cancelled or corrupt download
// leaves nothing behind; a corrupt file is errs.Unavailable wrapping
// ErrCorrupt. It returns the bytes received.
func (c *Catalog) Receive(ctx context.Context, m Manifest, open BlobOpener) (int64, error) {
	if err := c.Validate(); err != nil {
		return 0, err
	}
	if err := m.Validate(); err != nil {
		return 0, err
	}
	if c.Has(m) {
		return 0, nil
	}
	td, err := newTempDir(c.tmpDir(), "fetch-")
	if err != nil {
		return 0, fmt.Errorf("receive %s %s: %w", m.Kind, m.Name, err)
	}
	defer td.Remove()
	stage := filepath.Join(td.Path, "out")
	if err := os.Mkdir(stage, DirMode); err != nil {
		return 0, err
	}
	var total int64
	for _, bf := range m.Files {
		n, err := receiveFile(ctx, stage, bf, open)
		total += n
		if err != nil {
			return total, fmt.Errorf("receive %s %s: %s: %w", m.Kind, m.Name, bf.Path, err)
		}
	}
	if err := syncDir(stage); err != nil {
		return total, err
	}
	dst := c.installedDir(m)
	if err := os.MkdirAll(filepath.Dir(dst), DirMode); err != nil {
		return total, err
	}
	err = unix.Renameat2(unix.AT_FDCWD, stage, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if err != nil && !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.ENOTEMPTY) {
		return total, fmt.Errorf("receive %s %s: install: %w", m.Kind, m.Name, err)
	}
	if err := syncDir(filepath.Dir(dst)); err != nil {
		return total, err
	}
	if err == nil {
		c.log().Info("received", "kind", m.Kind, "name", m.Name, "bytes", total)
	}
	return total, nil
}

func receiveFile(ctx context.Context, stage string, bf BlobFile, open BlobOpener) (int64, error) {
	p := filepath.Join(stage, filepath.FromSlash(bf.Path))
	if err := os.MkdirAll(filepath.Dir(p), DirMode); err != nil {
		return 0, err
	}
	body, sparse, err := open(ctx, bf)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	h := sha256.New()
	cr := &countReader{r: body}
	if sparse {
		err = readSparse(cr, f, bf.Size, h)
	} else {
		var n int64
		n, err = io.Copy(io.MultiWriter(f, h), io.LimitReader(cr, bf.Size+1))
		if err == nil && n != bf.Size {
			err = errs.New(errs.Unavailable, "%w: %d bytes, want %d", ErrCorrupt, n, bf.Size)
		}
	}
	if err == nil {
		if got := hex.EncodeToString(h.Sum(nil)); got != bf.SHA256 {
			err = errs.New(errs.Unavailable, "%w: got sha256 %s, want %s", ErrCorrupt, got, bf.SHA256)
		}
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Chmod(os.FileMode(bf.Mode))
	}
	return cr.n, err
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

func syncDir(d string) error {
	f, err := os.Open(d)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
