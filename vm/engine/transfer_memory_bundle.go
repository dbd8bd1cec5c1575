package engine

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
)

// Moving an instance with its memory and its snapshots (issue 15) ships a
// bundle: a disk stream of several files (see transfer_stream.go). One line of
// JSON (BundleHeader) lists the files; then, for each file in that order,
// exactly its Size bytes and their checksum in the algorithm the header
// names (CRC32C in what this engine writes; version 2 bundles carry
// SHA-256, and are still read). The files are the
// instance's disk, each snapshot's disk and, for an instance suspended
// with its memory (Suspend), its saved memory and device state. A bundle
// whose bytes do not match a trailer, that ends early or names a file it
// may not is refused (errs.InvalidArgument) and nothing of it is kept.
//
// A moved snapshot keeps its name and creation time. A memory snapshot
// moves with its memory and its own agent key (files "snapshots/<ID>/
// memory/..." and "snapshots/<ID>/agent_key", BundleSnapshot.Memory; see
// snapshot_move.go); one taken without such a key (by an older engine)
// moves as its disk only, since its saved guest agent trusts only the key
// of the host it was taken on: the move says so (BundleHeader.Dropped).

// BundleStreamVersion is the bundle format this engine writes; it reads
// this one and version 2 (SHA-256 trailers, no Checksum).
const BundleStreamVersion = 3

// BundleHeader opens a bundle.
type BundleHeader struct {
	Version   int    `json:"version"` // BundleStreamVersion
	ID        string `json:"id"`
	Name      string `json:"name"`
	Image     string `json:"image"` // resolved reference, "os@version"
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskGiB   int    `json:"disk_gib"`
	// Memory says the bundle carries the suspended instance's memory and
	// device state (files under "move-state/"): it resumes on the target.
	Memory bool `json:"memory,omitempty"`
	// AgentKey is the guest agent's pinned key (authorized_keys form),
	// kept with Memory: the same guest answers on the target.
	AgentKey  string           `json:"agent_key,omitempty"`
	Snapshots []BundleSnapshot `json:"snapshots,omitempty"`
	// Dropped names the memory snapshots that move as disk snapshots.
	Dropped []string     `json:"dropped,omitempty"`
	Files   []BundleFile `json:"files"`
	// Checksum names the files' trailers' algorithm (as
	// DiskHeader.Checksum); version 2 bundles leave it out (SHA-256).
	Checksum string `json:"checksum,omitempty"`
	// Offset, in a resumed export (ExportBundleFrom) only, is where in
	// the bundle's body (what follows this line in a whole bundle) the
	// stream's bytes start. Importers read only whole bundles (Offset 0);
	// a resumed one is spliced in by ResumingReader
	// (transfer_memory_resume.go).
	Offset int64 `json:"offset,omitempty"`
}

// BundleSnapshot is a snapshot carried by a bundle (its disk is the file
// "snapshots/<ID>/disk.qcow2").
type BundleSnapshot struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	// Memory: the snapshot's memory and agent key come with it; it
	// restores with its processes running on the target.
	Memory bool `json:"memory,omitempty"`
}

// BundleFile is one file of a bundle, its path relative to the
// instance's directory.
type BundleFile struct {
	Path string `json:"path"`
	Size int64  `json:"size"`
}

var stateFileRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`) })

// checkBundle checks a header's fields and file names.
func checkBundle(h BundleHeader) error {
	bad := func(format string, a ...any) error {
		return errs.New(errs.InvalidArgument, "bundle: "+format, a...)
	}
	if h.Version != 2 && h.Version != BundleStreamVersion {
		return bad("version %d, this host reads 2 to %d", h.Version, BundleStreamVersion)
	}
	if err := streamChecksum(h.Version, 3, h.Checksum); err != nil {
		return fmt.Errorf("bundle: %w", err)
	}
	if !vm.IsID(h.ID) {
		return bad("bad vm id %q", h.ID)
	}
	snaps, memSnaps := map[string]bool{}, map[string]bool{}
	for _, s := range h.Snapshots {
		if !vm.IsID(s.ID) || snaps[s.ID] || vm.ValidSnapshotName(s.Name) != nil {
			return bad("bad snapshot %q (%q)", s.ID, s.Name)
		}
		snaps[s.ID] = true
		memSnaps[s.ID] = s.Memory
	}
	seen := map[string]bool{}
	disk := false
	for _, f := range h.Files {
		if f.Size < 0 || seen[f.Path] {
			return bad("bad file %q", f.Path)
		}
		seen[f.Path] = true
		parts := strings.Split(f.Path, "/")
		switch {
		case f.Path == "disk.qcow2":
			disk = true
		case len(parts) == 2 && parts[0] == moveStateDir && stateFileRE().MatchString(parts[1]) && h.Memory:
		case len(parts) == 3 && parts[0] == "snapshots" && snaps[parts[1]] && parts[2] == snapDiskFile:
		case len(parts) == 3 && parts[0] == "snapshots" && memSnaps[parts[1]] && parts[2] == snapKeyFile:
		case len(parts) == 4 && parts[0] == "snapshots" && memSnaps[parts[1]] && parts[2] == snapMemDir && stateFileRE().MatchString(parts[3]):
		default:
			return bad("file %q may not be in a bundle", f.Path)
		}
	}
	if !disk {
		return bad("no disk")
	}
	for id, mem := range memSnaps {
		if mem && (!seen["snapshots/"+id+"/"+snapKeyFile] || !seen["snapshots/"+id+"/"+snapDiskFile]) {
			return bad("memory snapshot %s without its disk or key", id)
		}
	}
	return nil
}

// WriteBundle writes h and then each of h.Files, read from open (a path
// relative to the instance's directory), with its checksum.
func WriteBundle(w io.Writer, h BundleHeader, open func(path string) (io.ReadCloser, error)) error {
	return WriteBundleFrom(w, h, 0, open)
}

// ReadBundleHeader reads and checks a bundle's header from br.
func ReadBundleHeader(br *bufio.Reader) (BundleHeader, error) {
	var h BundleHeader
	if err := readHeader(br, "bundle", &h); err != nil {
		return h, err
	}
	if h.Offset != 0 {
		return h, errs.New(errs.InvalidArgument, "bundle: a part from byte %d, not a whole bundle", h.Offset)
	}
	return h, checkBundle(h)
}

// ReadBundleFiles writes each file of h from br into dir (under its
// path, through a ".part" file renamed once its checksum matched).
func ReadBundleFiles(br *bufio.Reader, h BundleHeader, dir string) error {
	for _, f := range h.Files {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		out, err := os.OpenFile(p+".part", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return err
		}
		err = ReadDiskBody(br, DiskHeader{Size: f.Size, Checksum: h.Checksum}, out)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("bundle %s: %w", f.Path, err)
		}
		if err := os.Rename(p+".part", p); err != nil {
			return err
		}
	}
	return nil
}
