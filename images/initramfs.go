package images

import (
	"bytes"
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
	"slices"
	"strings"
	"sync"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/sys/unix"
)

// initramfsFormat is bumped whenever the layout of the initramfs changes,
// so old cached files are not reused for a different layout.
const initramfsFormat = "minions-initramfs-v1"

// InitramfsMarker is the file at the root of every initramfs built here;
// the agent checks for it to know it is stage 1.
const InitramfsMarker = "/minions-initramfs"

// ModulesListPath is the file in the initramfs listing the modules to load,
// one path (relative to /) per line, in load order.
const ModulesListPath = "/etc/minions/modules"

// Initramfs is a built initramfs.
type Initramfs struct {
	Path          string
	AgentSHA256   string
	KernelVersion string
	Modules       []string // paths inside the initramfs, in load order
}

// EnsureInitramfs returns the initramfs for kernel k and the agent binary
// at agentPath, building it in dir if needed. It holds /init (the agent),
// the modules in InitramfsModules with their dependencies (load order from
// modules.dep), ModulesListPath, InitramfsMarker and /dev/console. The file
// is named by a hash of its inputs: a new agent or kernel yields a new
// file, and a file once written is never rewritten (a VM may boot from
// it). The archive is uncompressed: unpacking is faster than decompressing
// under TCG.
func EnsureInitramfs(ctx context.Context, dir string, k Kernel, agentPath string) (Initramfs, error) {
	// The agent's sum names the file; it is kept by the binary's identity
	// (agentSum), so an existing initramfs is found without reading the
	// agent.
	agentSum, err := agentSum(dir, agentPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Initramfs{}, errs.New(errs.NotFound, "initramfs: agent binary %s does not exist", agentPath)
		}
		return Initramfs{}, fmt.Errorf("initramfs: %w", err)
	}
	mods, err := initramfsLoadOrder(k.ModulesDir)
	if err != nil {
		return Initramfs{}, fmt.Errorf("initramfs for kernel %s: %w", k.Version, err)
	}
	inPaths := make([]string, len(mods))
	for i, m := range mods {
		inPaths[i] = path.Join("lib/modules", k.Version, m)
	}
	name := func(agentSum string) (string, Initramfs) {
		key := sha256.Sum256([]byte(initramfsFormat + "\n" + agentSum + "\n" + k.Version + "\n" + strings.Join(inPaths, "\n")))
		out := filepath.Join(dir, fmt.Sprintf("initramfs-%s-%s.cpio", k.Version, hex.EncodeToString(key[:8])))
		return out, Initramfs{Path: out, AgentSHA256: agentSum, KernelVersion: k.Version, Modules: inPaths}
	}
	out, res := name(agentSum)
	if _, err := os.Stat(out); err == nil {
		return res, nil
	}
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Initramfs{}, errs.New(errs.NotFound, "initramfs: agent binary %s does not exist", agentPath)
		}
		return Initramfs{}, fmt.Errorf("initramfs: %w", err)
	}
	if sum := sha256.Sum256(agent); hex.EncodeToString(sum[:]) != agentSum {
		// Replaced since it was stat'ed: name the file by what is built.
		if out, res = name(hex.EncodeToString(sum[:])); fileExistsNow(out) {
			return res, nil
		}
	}
	if err := os.MkdirAll(dir, DirMode); err != nil {
		return Initramfs{}, fmt.Errorf("initramfs: %w", err)
	}
	f, err := os.CreateTemp(dir, ".tmp-initramfs-")
	if err != nil {
		return Initramfs{}, fmt.Errorf("initramfs: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := lockFile(f); err != nil {
		f.Close()
		return Initramfs{}, fmt.Errorf("initramfs: %w", err)
	}
	err = writeInitramfs(ctx, f, k, agent, mods, inPaths)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, FileMode)
	}
	if err != nil {
		return Initramfs{}, fmt.Errorf("initramfs for kernel %s: %w", k.Version, err)
	}
	err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, out, unix.RENAME_NOREPLACE)
	if err != nil && !errors.Is(err, unix.EEXIST) { // EEXIST: a concurrent build won
		return Initramfs{}, fmt.Errorf("initramfs: %w", err)
	}
	return res, nil
}

func writeInitramfs(ctx context.Context, f *os.File, k Kernel, agent []byte, mods, inPaths []string) error {
	w := NewCpioWriter(f)
	dirs := map[string]bool{}
	mkdirs := func(p string) error {
		var parts []string
		for d := path.Dir(p); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			parts = append(parts, d)
		}
		for i := len(parts) - 1; i >= 0; i-- {
			dirs[parts[i]] = true
			if err := w.Dir(parts[i], 0o755); err != nil {
				return err
			}
		}
		return nil
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "newroot", "etc/minions"} {
		if err := mkdirs(d + "/x"); err != nil {
			return err
		}
	}
	if err := w.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := w.CharDev("dev/null", 0o666, 1, 3); err != nil {
		return err
	}
	if err := w.File("init", 0o755, bytes.NewReader(agent), int64(len(agent))); err != nil {
		return err
	}
	if err := w.File(strings.TrimPrefix(InitramfsMarker, "/"), 0o644, strings.NewReader(""), 0); err != nil {
		return err
	}
	var list strings.Builder
	for i, m := range mods {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := mkdirs(inPaths[i]); err != nil {
			return err
		}
		if err := addFile(w, inPaths[i], filepath.Join(k.ModulesDir, m)); err != nil {
			return err
		}
		list.WriteString(inPaths[i] + "\n")
	}
	l := list.String()
	if err := w.File(strings.TrimPrefix(ModulesListPath, "/"), 0o644, strings.NewReader(l), int64(len(l))); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return f.Sync()
}

func addFile(w *CpioWriter, name, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return w.File(name, uint32(st.Mode().Perm()), io.Reader(f), st.Size())
}

func fileExistsNow(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// loadOrders remembers the load order of InitramfsModules per modules.dep
// file, by the file's identity (path, size, modification time, inode):
// every create and start resolves its image (a create twice), and parsing
// a kernel's 100 KB modules.dep took 1-3.5 ms and 2100 allocations each
// time, before QEMU runs. A changed file has another identity and is read
// again.
var loadOrders struct {
	mu sync.Mutex
	m  map[depFile][]string
}

type depFile struct {
	path        string
	size, mtime int64
	ino         uint64
}

// initramfsLoadOrder is the load order of InitramfsModules from the
// modules.dep in modulesDir (ModuleDeps.LoadOrder), cached by loadOrders.
// The caller may not modify the result.
func initramfsLoadOrder(modulesDir string) ([]string, error) {
	p := filepath.Join(modulesDir, "modules.dep")
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", &fs.PathError{Op: "stat", Path: p, Err: err})
	}
	key := depFile{path: p, size: st.Size, mtime: st.Mtim.Nano(), ino: st.Ino}
	loadOrders.mu.Lock()
	mods, ok := loadOrders.m[key]
	loadOrders.mu.Unlock()
	if ok {
		return mods, nil
	}
	deps, err := ReadModulesDep(modulesDir)
	if err != nil {
		return nil, err
	}
	if mods, err = deps.LoadOrder(InitramfsModules); err != nil {
		return nil, err
	}
	loadOrders.mu.Lock()
	defer loadOrders.mu.Unlock()
	if loadOrders.m == nil {
		loadOrders.m = map[depFile][]string{}
	}
	for k := range loadOrders.m {
		if k.path == p {
			delete(loadOrders.m, k) // the file's older identity
		}
	}
	loadOrders.m[key] = slices.Clip(mods)
	return mods, nil
}
