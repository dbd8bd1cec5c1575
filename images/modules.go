package images

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
)

// InitramfsModules are the modules the initramfs loads, by name; their
// dependencies are added from modules.dep. Together they give the guest
// virtio block, net, console (virtio-serial agent channel) and vsock on both
// the mmio (microvm) and PCI transports.
var InitramfsModules = []string{
	"virtio_mmio",
	"virtio_pci",
	"virtio_blk",
	"virtio_net",
	"virtio_console",
	"vmw_vsock_virtio_transport",
}

// modName normalises a module name: the kernel treats '-' and '_' alike.
func modName(s string) string {
	s = strings.TrimSuffix(filepath.Base(s), ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// ModuleDeps maps a module's path (relative to the modules directory, as
// in modules.dep) to the paths of the modules it needs.
type ModuleDeps map[string][]string

// ReadModulesDep parses the modules.dep file in modulesDir.
func ReadModulesDep(modulesDir string) (ModuleDeps, error) {
	b, err := os.ReadFile(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return ParseModulesDep(b)
}

// ParseModulesDep parses the text of a modules.dep file.
func ParseModulesDep(b []byte) (ModuleDeps, error) {
	deps := ModuleDeps{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d: no colon", n)
		}
		deps[strings.TrimSpace(mod)] = strings.Fields(rest)
	}
	return deps, sc.Err()
}

// LoadOrder returns the paths of the named modules and everything they
// depend on, each once, every module after its dependencies. A name that
// is not in deps is a NotFound error; a dependency cycle is an error.
func (deps ModuleDeps) LoadOrder(names []string) ([]string, error) {
	byName := make(map[string]string, len(deps))
	for p := range deps {
		byName[modName(p)] = p
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(p string) error
	visit = func(p string) error {
		switch state[p] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module dependency cycle at %s", p)
		}
		state[p] = visiting
		ds, ok := deps[p]
		if !ok {
			return errs.New(errs.NotFound, "module %s is not in modules.dep", p)
		}
		// modules.dep lists dependencies in reverse load order.
		for i := len(ds) - 1; i >= 0; i-- {
			if err := visit(ds[i]); err != nil {
				return err
			}
		}
		state[p] = done
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		p, ok := byName[modName(n)]
		if !ok {
			return nil, errs.New(errs.NotFound, "module %s is not in modules.dep (built in, or not shipped by this kernel)", n)
		}
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// GenerateModulesDep writes modules.dep in modulesDir from the "depends"
// field of every module's .modinfo section, like depmod does for the text
// file (Debian's kernel package ships no modules.dep: its postinst runs
// depmod). Lines list every transitive dependency in reverse load order.
func GenerateModulesDep(modulesDir string) error {
	direct := map[string][]string{} // path -> names
	pathOf := map[string]string{}   // name -> path
	err := filepath.WalkDir(modulesDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		rel, _ := filepath.Rel(modulesDir, p)
		name, depends, err := readModinfo(p)
		if err != nil {
			return fmt.Errorf("module %s: %w", rel, err)
		}
		if name == "" {
			name = modName(rel)
		}
		pathOf[modName(name)] = rel
		direct[rel] = depends
		return nil
	})
	if err != nil {
		return fmt.Errorf("generate modules.dep: %w", err)
	}
	deps := ModuleDeps{}
	for rel, names := range direct {
		var ps []string
		for _, n := range names {
			if dp, ok := pathOf[modName(n)]; ok {
				ps = append(ps, dp)
			}
		}
		deps[rel] = ps
	}
	paths := make([]string, 0, len(deps))
	for p := range deps {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var buf bytes.Buffer
	for _, p := range paths {
		order, err := deps.LoadOrder([]string{modName(p)})
		if err != nil {
			return fmt.Errorf("generate modules.dep: %w", err)
		}
		order = order[:len(order)-1] // drop the module itself
		fmt.Fprintf(&buf, "%s:", p)
		for i := len(order) - 1; i >= 0; i-- {
			fmt.Fprintf(&buf, " %s", order[i])
		}
		buf.WriteByte('\n')
	}
	return writeFileAtomic(filepath.Join(modulesDir, "modules.dep"), buf.Bytes(), 0o644)
}

// readModinfo returns the name and dependency names recorded in a module.
func readModinfo(path string) (name string, depends []string, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return "", nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return "", nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			name = v
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					depends = append(depends, d)
				}
			}
		}
	}
	return name, depends, nil
}

// writeFileAtomic writes data to a temporary file next to path and renames
// it into place.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, mode)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
