package backup

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/disk"
)

func restoreCmd() *cli.Command {
	return &cli.Command{Name: "restore", Usage: "FILE [--config FILE]", Summary: "Restore a backup onto a fresh host (refuses a state dir that has VMs)", MinArgs: 1, MaxArgs: 1,
		Flags: func(fs *flag.FlagSet) {
			fs.String("config", config.DefaultFile, "where the backup's config file goes (if that file exists it is kept and the backup's is written beside the store)")
		},
		Run: runRestore}
}

// restoreResult is what a restore did.
type restoreResult struct {
	StateDir     string   `json:"state_dir"`
	Schema       int      `json:"schema"`
	FromSchema   int      `json:"from_schema"`
	FromVersion  string   `json:"from_version"`
	Users        int      `json:"users"`
	Tokens       int      `json:"tokens"`
	VMs          []string `json:"vms"`
	DiskMissing  []string `json:"disk_missing"`
	Config       string   `json:"config,omitempty"`
	Replaced     []string `json:"replaced,omitempty"`
	NextSteps    []string `json:"next_steps"`
	FilesChecked int      `json:"files_checked"`
}

func runRestore(ctx context.Context, x *cli.Ctx) error {
	// --config names where the backup's config goes, not one to read: the
	// state dir comes from --state-dir, else this host's config file.
	state, run := x.G.StateDir, x.G.RunDir
	if state == "" {
		cfg, err := config.Load(config.DefaultFile, false)
		if err != nil {
			return err
		}
		state = cfg.StateDir
		if run == "" {
			run = cfg.RunDir
		}
	}
	paths, err := local.ResolvePaths(state, run)
	if err != nil {
		return err
	}
	res, err := restoreBackup(ctx, x, x.Args[0], paths, x.FS.Lookup("config").Value.String())
	if err != nil {
		return fmt.Errorf("restore %s: %w", x.Args[0], err)
	}
	return x.Print(res, func(w io.Writer) {
		fmt.Fprintf(w, "restored into %s: %d users, %d tokens, %d vms (schema %d from %d)\n", res.StateDir, res.Users, res.Tokens, len(res.VMs), res.Schema, res.FromSchema)
		if len(res.DiskMissing) > 0 {
			fmt.Fprintf(w, "without disks (marked \"%s\"): %s\n", store.NoteDiskMissing, strings.Join(res.DiskMissing, ", "))
		}
		if res.Config != "" {
			fmt.Fprintf(w, "config  %s\n", res.Config)
		}
		for _, s := range res.NextSteps {
			fmt.Fprintf(w, "next: %s\n", s)
		}
	})
}

// restoreBackup extracts file aside in the state dir, checks it against its
// manifest and only then installs it. It refuses a state dir whose store
// has VMs: a restore is for a fresh host.
func restoreBackup(ctx context.Context, x *cli.Ctx, file string, paths local.Paths, configFile string) (restoreResult, error) {
	res := restoreResult{StateDir: paths.State, Schema: store.SchemaVersion()}
	if os.Geteuid() != 0 {
		return res, errs.New(errs.PermissionDenied, "restoring an installation needs root (it writes the store, host keys and disks)")
	}
	dbPath := filepath.Join(paths.State, "minions.db")
	if _, ok, err := store.FileSchema(ctx, dbPath); err != nil {
		return res, err
	} else if ok {
		db, err := store.Open(ctx, dbPath)
		if err != nil {
			return res, err
		}
		n, err := store.CountVMs(ctx, db)
		db.Close()
		if err != nil {
			return res, err
		}
		if n > 0 {
			return res, errs.New(errs.FailedPrecondition, "%s already has a store with %d vms: restore onto a fresh host or another --state-dir", paths.State, n)
		}
	}
	f, err := os.Open(file)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return res, errs.New(errs.NotFound, "no backup file %s", file)
		}
		return res, err
	}
	defer f.Close()
	if err := os.MkdirAll(paths.State, 0o700); err != nil {
		return res, err
	}
	stage, err := os.MkdirTemp(paths.State, ".restore-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(stage)
	progressLine(x, "extract and check")
	m, got, err := extractBackup(ctx, f, stage)
	if err != nil {
		return res, err
	}
	if err := checkManifest(m, got); err != nil {
		return res, err
	}
	res.FromSchema, res.FromVersion, res.FilesChecked = m.Schema, m.MinionsVersion, len(got)

	// Install: state files, then the store last (its presence is what
	// makes the state dir taken).
	progressLine(x, "install")
	stateStage := filepath.Join(stage, "state")
	files, err := regularFiles(stateStage)
	if err != nil {
		return res, err
	}
	for _, rel := range files {
		dst := filepath.Join(paths.State, rel)
		image := strings.HasPrefix(rel, "images"+string(filepath.Separator))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return res, err
		}
		if image {
			if err := catalogueModes(paths.State, filepath.Dir(dst)); err != nil {
				return res, err
			}
		}
		if _, err := os.Lstat(dst); err == nil {
			if image {
				continue // image versions are immutable: the one here is the same
			}
			if err := os.Rename(dst, dst+".pre-restore"); err != nil {
				return res, err
			}
			res.Replaced = append(res.Replaced, dst+".pre-restore")
		}
		if err := os.Rename(filepath.Join(stateStage, rel), dst); err != nil {
			return res, err
		}
		// Catalogue files are read by every VM's jailed uid; all else
		// (keys, certs, VM disks, which the jail hands to its VM's uid
		// at start) is root's alone.
		mode := os.FileMode(0o600)
		if image {
			mode = images.FileMode
		}
		if err := os.Chmod(dst, mode); err != nil {
			return res, err
		}
	}
	if _, err := os.Lstat(dbPath); err == nil {
		if err := os.Rename(dbPath, dbPath+".pre-restore"); err != nil {
			return res, err
		}
		res.Replaced = append(res.Replaced, dbPath+".pre-restore")
	}
	for _, sfx := range []string{"-wal", "-shm"} {
		os.Remove(dbPath + sfx)
	}
	if err := os.Rename(filepath.Join(stage, "store", "minions.db"), dbPath); err != nil {
		return res, err
	}
	if cfgFile := filepath.Join(stage, "config", "config.toml"); fileExists(cfgFile) {
		dst := configFile
		if fileExists(dst) {
			dst = filepath.Join(paths.State, "config.restored.toml")
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return res, err
		}
		b, err := os.ReadFile(cfgFile)
		if err != nil {
			return res, err
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			return res, err
		}
		res.Config = dst
	}

	// The store: migrated forward, nothing left "running", and each VM
	// either has its disk (pointed at this host's base image) or says it
	// has none.
	progressLine(x, "store")
	db, err := store.Open(ctx, dbPath)
	if err != nil {
		return res, err
	}
	defer db.Close()
	if err := store.SettleRestored(ctx, db); err != nil {
		return res, err
	}
	for _, d := range m.Disks {
		if d.Backing == "" {
			continue
		}
		backing := d.Backing
		if !filepath.IsAbs(backing) {
			backing = filepath.Join(paths.State, filepath.FromSlash(backing))
		}
		if !fileExists(backing) {
			return res, errs.New(errs.FailedPrecondition, "base image %s of %s is missing on this host", backing, d.Path)
		}
		target := filepath.Join(paths.State, filepath.FromSlash(strings.TrimPrefix(d.Path, "state/")))
		if err := disk.SetBacking(ctx, target, backing, d.BackingFormat); err != nil {
			return res, err
		}
	}
	vms, err := store.ListVMs(ctx, db, "")
	if err != nil {
		return res, err
	}
	for _, v := range vms {
		res.VMs = append(res.VMs, v.Name)
		if fileExists(filepath.Join(paths.State, "vms", v.ID, "disk.qcow2")) {
			continue
		}
		if err := store.SetVMNote(ctx, db, v.ID, store.StateError, store.NoteDiskMissing); err != nil {
			return res, err
		}
		res.DiskMissing = append(res.DiskMissing, v.Name)
	}
	users, err := store.ListUsers(ctx, db)
	if err != nil {
		return res, err
	}
	tokens, err := store.ListAllTokens(ctx, db)
	if err != nil {
		return res, err
	}
	res.Users, res.Tokens = len(users), len(tokens)
	if res.VMs == nil {
		res.VMs = []string{}
	}
	if res.DiskMissing == nil {
		res.DiskMissing = []string{}
	}
	res.NextSteps = []string{"run `minions init` on this host (bridge and nftables for the restored addresses)",
		"start the restored vms with `minions start NAME` (they come back stopped)"}
	return res, nil
}

// catalogueModes gives dir and its parents up to (not including) state
// the catalogue's directory mode, whatever the umask or an earlier run
// left: a jailed uid must pass through them to its VM's images.
func catalogueModes(state, dir string) error {
	for d := dir; d != state && strings.HasPrefix(d, state+string(filepath.Separator)); d = filepath.Dir(d) {
		if err := os.Chmod(d, images.DirMode); err != nil {
			return err
		}
	}
	return nil
}

// extractBackup writes every file of the backup under stage and returns
// the manifest and the checksum of each file it wrote. Runs of zeros are
// written as holes, so sparse disks and images stay sparse.
func extractBackup(ctx context.Context, f *os.File, stage string) (backupManifest, map[string]backupEntry, error) {
	var m backupManifest
	got := map[string]backupEntry{}
	br := bufio.NewReaderSize(f, 1<<20)
	var r io.Reader = br
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return m, nil, errs.New(errs.InvalidArgument, "not a minions backup: %v", err)
		}
		defer gz.Close()
		r = gz
	}
	tr := tar.NewReader(r)
	sawManifest := false
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return m, nil, errs.New(errs.InvalidArgument, "not a minions backup (or truncated): %v", err)
		}
		if err := ctx.Err(); err != nil {
			return m, nil, err
		}
		name := hdr.Name
		if hdr.Typeflag != tar.TypeReg {
			return m, nil, errs.New(errs.InvalidArgument, "backup entry %q is not a regular file", name)
		}
		if name == "manifest.json" {
			b, err := io.ReadAll(io.LimitReader(tr, 64<<20))
			if err != nil {
				return m, nil, err
			}
			if err := json.Unmarshal(b, &m); err != nil {
				return m, nil, errs.New(errs.InvalidArgument, "backup manifest: %v", err)
			}
			sawManifest = true
			continue
		}
		clean := path.Clean(name)
		if clean != name || strings.HasPrefix(clean, "/") || strings.HasPrefix(clean, "..") ||
			!(clean == "store/minions.db" || clean == "config/config.toml" || strings.HasPrefix(clean, "state/")) {
			return m, nil, errs.New(errs.InvalidArgument, "backup entry %q is not one a backup holds", name)
		}
		if _, dup := got[clean]; dup {
			return m, nil, errs.New(errs.InvalidArgument, "backup entry %q appears twice", name)
		}
		dst := filepath.Join(stage, filepath.FromSlash(clean))
		if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			return m, nil, err
		}
		ent, err := writeSparse(dst, tr, os.FileMode(hdr.Mode).Perm()&0o700|0o400)
		if err != nil {
			return m, nil, fmt.Errorf("extract %s: %w", name, err)
		}
		ent.Name = clean
		got[clean] = ent
	}
	if !sawManifest {
		return m, nil, errs.New(errs.InvalidArgument, "not a minions backup (no manifest.json: truncated?)")
	}
	return m, got, nil
}

// writeSparse copies r to a new file at dst, seeking over all-zero blocks.
func writeSparse(dst string, r io.Reader, mode os.FileMode) (backupEntry, error) {
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode|0o200)
	if err != nil {
		return backupEntry{}, err
	}
	defer out.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	zero := make([]byte, 64<<10)
	var size int64
	for {
		n, rerr := io.ReadFull(r, buf)
		chunk := buf[:n]
		h.Write(chunk)
		for off := 0; off < len(chunk); off += len(zero) {
			end := min(off+len(zero), len(chunk))
			if bytes.Equal(chunk[off:end], zero[:end-off]) {
				if _, err := out.Seek(int64(end-off), io.SeekCurrent); err != nil {
					return backupEntry{}, err
				}
				continue
			}
			if _, err := out.Write(chunk[off:end]); err != nil {
				return backupEntry{}, err
			}
		}
		size += int64(n)
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return backupEntry{}, rerr
		}
	}
	if err := out.Truncate(size); err != nil {
		return backupEntry{}, err
	}
	if err := out.Chmod(mode); err != nil {
		return backupEntry{}, err
	}
	return backupEntry{Size: size, SHA256: hex.EncodeToString(h.Sum(nil))}, out.Sync()
}

// checkManifest compares what was extracted with what the manifest lists.
func checkManifest(m backupManifest, got map[string]backupEntry) error {
	if m.Format != backupFormat {
		return errs.New(errs.FailedPrecondition, "backup format %d is not one this minions (%s) reads (%d)", m.Format, cli.Version, backupFormat)
	}
	if m.Schema > store.SchemaVersion() {
		return errs.New(errs.FailedPrecondition, "backup of schema %d is newer than this minions (%s, schema %d): upgrade minions first", m.Schema, cli.Version, store.SchemaVersion())
	}
	listed := map[string]bool{}
	for _, e := range m.Files {
		listed[e.Name] = true
		g, ok := got[e.Name]
		if !ok {
			return errs.New(errs.InvalidArgument, "backup is incomplete: %s is missing", e.Name)
		}
		if g.Size != e.Size || g.SHA256 != e.SHA256 {
			return errs.New(errs.InvalidArgument, "backup is corrupt: %s does not match its checksum", e.Name)
		}
	}
	for name := range got {
		if !listed[name] {
			return errs.New(errs.InvalidArgument, "backup holds %s, which its manifest does not list", name)
		}
	}
	if !listed["store/minions.db"] {
		return errs.New(errs.InvalidArgument, "backup has no store")
	}
	return nil
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}
