package backup

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/units"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/disk"
)

// backupFormat is the version of the backup file layout (manifest.json's
// "format"); restore refuses formats it does not know.
const backupFormat = 1

// A backup file is a tar, gzip-compressed when its name ends in .gz or
// .tgz, holding:
//
//	store/minions.db         an online copy of the store (VACUUM INTO)
//	config/config.toml       the daemon's config file, when there is one
//	state/keys/...           host keys (SSH host key, agent host key)
//	state/certs/...          certificates and ACME account, when any
//	state/vms/<id>/...       with --with-disks: each VM's disk and snapshots
//	state/images/...         with --with-disks: the base images and kernels
//	manifest.json            last: versions, contents and their sha256
//
// The manifest is the last entry so that checksums are computed while the
// file is written once; restore extracts aside and checks before it
// installs anything.
type backupManifest struct {
	Format         int           `json:"format"`
	MinionsVersion string        `json:"minions_version"`
	Schema         int           `json:"schema"`
	CreatedAt      time.Time     `json:"created_at"`
	StateDir       string        `json:"state_dir"`
	WithDisks      bool          `json:"with_disks"`
	VMs            []backupVM    `json:"vms"`
	Disks          []backupDisk  `json:"disks,omitempty"`
	Files          []backupEntry `json:"files"`
}

type backupVM struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Image  string `json:"image"`
	Disk   bool   `json:"disk"`   // its disk is in the backup
	Frozen bool   `json:"frozen"` // it ran; copied with filesystems frozen
}

// backupDisk is a qcow2 file in the backup and the base it needs, relative
// to the state directory when it lived there (else absolute: the restored
// host must have that very file).
type backupDisk struct {
	Path          string `json:"path"`
	Backing       string `json:"backing,omitempty"`
	BackingFormat string `json:"backing_format,omitempty"`
}

type backupEntry struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Command is `minions backup` with its subcommands create and restore.
func Command() *cli.Command {
	return &cli.Command{Name: "backup", HostOnly: true, Summary: "Back up and restore the whole installation", Sub: []*cli.Command{
		{Name: "create", Usage: "FILE [--with-disks] [--config FILE]", Summary: "Write a consistent backup of the store, config and keys (and VM disks) while VMs run", MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.Bool("with-disks", false, "also copy every VM's disk and snapshots (running guests are frozen for the copy) and the base images they use")
				fs.String("config", config.DefaultFile, "the daemon's config file, included when it exists")
			},
			Run: runBackupCreate},
		restoreCmd(),
	}}
}

// progressLine prints a step on a terminal.
func progressLine(x *cli.Ctx, format string, args ...any) {
	if x.TTY && !x.G.JSON {
		fmt.Fprintf(x.Stderr, "  "+format+"\n", args...)
	}
}

func runBackupCreate(ctx context.Context, x *cli.Ctx) error {
	file, err := filepath.Abs(x.Args[0])
	if err != nil {
		return err
	}
	if _, err := os.Lstat(file); err == nil {
		return errs.New(errs.AlreadyExists, "backup %s already exists: choose another name", file)
	}
	withDisks := x.FS.Lookup("with-disks").Value.String() == "true"
	cfg, err := config.Effective(x.FS, x.G.StateDir, x.G.RunDir)
	if err != nil {
		return err
	}
	paths, err := local.ResolvePaths(cfg.StateDir, cfg.RunDir)
	if err != nil {
		return err
	}
	if _, ok, err := store.FileSchema(ctx, filepath.Join(paths.State, "minions.db")); err != nil {
		return err
	} else if !ok {
		return errs.New(errs.NotFound, "no installation in %s to back up", paths.State)
	}
	e, err := daemon.Open(ctx, local.OpenOptions(cfg, paths, local.CLILogger()))
	if err != nil {
		return err
	}
	defer e.Close()
	if err := e.Service.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	admin, err := e.Service.EnsureUser(ctx, "root", true)
	if err != nil {
		return err
	}
	start := time.Now()
	m, err := writeBackup(ctx, x, e, admin, paths, x.FS.Lookup("config").Value.String(), file, withDisks)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	var size int64
	if st, err := os.Stat(file); err == nil {
		size = st.Size()
	}
	res := map[string]any{"file": file, "size_bytes": size, "format": m.Format, "schema": m.Schema, "minions_version": m.MinionsVersion,
		"with_disks": m.WithDisks, "vms": m.VMs, "files": len(m.Files), "seconds": time.Since(start).Seconds()}
	return x.Print(res, func(w io.Writer) {
		fmt.Fprintf(w, "backup %s: %d vms, %d files, %s, schema %d, %.1fs\n", file, len(m.VMs), len(m.Files), units.Bytes(size), m.Schema, time.Since(start).Seconds())
		if !m.WithDisks && len(m.VMs) > 0 {
			fmt.Fprintln(w, "without disks: restored vms will be marked \"disk missing\" (use --with-disks to keep them)")
		}
	})
}

// writeBackup writes the backup to file via file.tmp, removed on failure.
func writeBackup(ctx context.Context, x *cli.Ctx, e *local.Installation, admin service.Caller, paths local.Paths, configFile, file string, withDisks bool) (backupManifest, error) {
	m := backupManifest{Format: backupFormat, MinionsVersion: cli.Version, Schema: store.SchemaVersion(), CreatedAt: time.Now().UTC(),
		StateDir: paths.State, WithDisks: withDisks}
	stage, err := os.MkdirTemp(paths.State, ".backup-")
	if err != nil {
		return m, err
	}
	defer os.RemoveAll(stage)

	progressLine(x, "store")
	dbCopy := filepath.Join(stage, "minions.db")
	if err := store.BackupInto(ctx, e.DB, dbCopy); err != nil {
		return m, err
	}
	// The VMs are those of the copy, so disks and rows agree.
	vms, err := vmsOf(ctx, dbCopy)
	if err != nil {
		return m, err
	}
	frozen := map[string]bool{}
	var disks []service.BackedUpDisk
	if withDisks {
		ids := make([]string, len(vms))
		for i, v := range vms {
			ids[i] = v.ID
		}
		disks, err = e.Service.BackupDisks(ctx, admin, ids, stage, func(s string) { progressLine(x, "%s", s) })
		if err != nil {
			return m, err
		}
	}
	hasDisk := map[string]bool{}
	for _, d := range disks {
		frozen[d.VMID] = d.Frozen
		hasDisk[d.VMID] = len(d.Files) > 0
	}
	for _, v := range vms {
		m.VMs = append(m.VMs, backupVM{ID: v.ID, Name: v.Name, Image: v.Image, Disk: hasDisk[v.ID], Frozen: frozen[v.ID]})
	}

	// What goes in: name in the backup -> file on this host.
	type item struct{ name, src string }
	items := []item{{"store/minions.db", dbCopy}}
	if st, err := os.Stat(configFile); err == nil && st.Mode().IsRegular() {
		items = append(items, item{"config/config.toml", configFile})
	}
	for _, dir := range []string{"keys", "certs"} {
		files, err := regularFiles(filepath.Join(paths.State, dir))
		if err != nil {
			return m, err
		}
		for _, f := range files {
			items = append(items, item{filepath.ToSlash(filepath.Join("state", dir, f)), filepath.Join(paths.State, dir, f)})
		}
	}
	bases := map[string]bool{} // base image directories, relative to the state dir
	for _, d := range disks {
		for _, f := range d.Files {
			src := filepath.Join(stage, f)
			items = append(items, item{filepath.ToSlash(filepath.Join("state", f)), src})
			if filepath.Base(f) != "disk.qcow2" {
				continue
			}
			info, err := disk.Info(ctx, src)
			if err != nil {
				return m, err
			}
			bd := backupDisk{Path: filepath.ToSlash(filepath.Join("state", f)), Backing: info.Backing, BackingFormat: info.BackingFmt}
			if rel, err := filepath.Rel(paths.State, info.Backing); err == nil && info.Backing != "" && !strings.HasPrefix(rel, "..") {
				bd.Backing = filepath.ToSlash(rel)
				bases[filepath.Dir(rel)] = true
			}
			m.Disks = append(m.Disks, bd)
		}
	}
	if withDisks && len(bases) > 0 {
		// The kernels too: a fresh host has none and may not reach the
		// archive they come from.
		bases[filepath.Join("images", "kernels")] = true
	}
	var baseDirs []string
	for b := range bases {
		baseDirs = append(baseDirs, b)
	}
	sort.Strings(baseDirs)
	for _, b := range baseDirs {
		files, err := regularFiles(filepath.Join(paths.State, b))
		if err != nil {
			return m, err
		}
		for _, f := range files {
			items = append(items, item{filepath.ToSlash(filepath.Join("state", b, f)), filepath.Join(paths.State, b, f)})
		}
	}

	tmp := file + ".tmp"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return m, err
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(tmp)
		}
	}()
	var w io.Writer = out
	var gz *gzip.Writer
	if strings.HasSuffix(file, ".gz") || strings.HasSuffix(file, ".tgz") {
		gz, _ = gzip.NewWriterLevel(out, gzip.BestSpeed)
		w = gz
	}
	tw := tar.NewWriter(w)
	for _, it := range items {
		progressLine(x, "write %s", it.name)
		ent, err := addFile(ctx, tw, it.name, it.src)
		if err != nil {
			return m, err
		}
		m.Files = append(m.Files, ent)
	}
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, err
	}
	if err := tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o600, Size: int64(len(mb)), ModTime: m.CreatedAt, Typeflag: tar.TypeReg}); err != nil {
		return m, err
	}
	if _, err := tw.Write(mb); err != nil {
		return m, err
	}
	if err := tw.Close(); err != nil {
		return m, err
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return m, err
		}
	}
	if err := out.Sync(); err != nil {
		return m, err
	}
	if err := out.Close(); err != nil {
		return m, err
	}
	if err := os.Rename(tmp, file); err != nil {
		return m, err
	}
	ok = true
	return m, nil
}

// vmsOf lists the VMs of the store copy at file.
func vmsOf(ctx context.Context, file string) ([]store.VM, error) {
	db, err := store.Open(ctx, file)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	return store.ListVMs(ctx, db, "")
}

// regularFiles lists the regular files under dir, relative to it; a
// missing dir has none.
func regularFiles(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == dir && os.IsNotExist(err) {
				return filepath.SkipDir
			}
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out, err
}

// addFile streams src into tw as name and returns its checksum.
func addFile(ctx context.Context, tw *tar.Writer, name, src string) (backupEntry, error) {
	f, err := os.Open(src)
	if err != nil {
		return backupEntry{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return backupEntry{}, err
	}
	hdr := &tar.Header{Name: name, Mode: int64(st.Mode().Perm()), Size: st.Size(), ModTime: st.ModTime(), Typeflag: tar.TypeReg}
	if err := tw.WriteHeader(hdr); err != nil {
		return backupEntry{}, err
	}
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(tw, h), ctxReader{ctx, f}, make([]byte, 1<<20))
	if err != nil {
		return backupEntry{}, fmt.Errorf("write %s: %w", name, err)
	}
	if n != st.Size() {
		return backupEntry{}, fmt.Errorf("write %s: it changed size while being copied", name)
	}
	return backupEntry{Name: name, Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

// ctxReader stops a long copy when ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
