package jail

import (
	"path/filepath"
	"slices"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/jail/jailexec"
)

// Bind, Access and Plan are the launcher's (package jailexec, which the
// small minions-relay binary links without this package's cgroup
// library).
type (
	Bind   = jailexec.Bind
	Access = jailexec.Access
	Plan   = jailexec.Plan
)

// Request describes one process to jail.
type Request struct {
	UID    int   // from Config.UID
	Groups []int // supplementary groups
	Cgroup string
	Dir    string   // working directory
	Argv   []string // Argv[0] absolute
	// ReadOnly are files the process reads (kernel, initramfs, backing
	// images, the executable); Writable are its own files and
	// directories (run dir, console log, disk overlay).
	ReadOnly []string
	Writable []string
	// Env is added to the launcher's clean environment (NAME=value each;
	// jailexec.CheckEnv).
	Env []string
}

// Plan computes the plan for r: the hidden directories (without those
// inside another), and the binds of every requested path that lies in a
// hidden directory, sorted, without paths inside another bind of the same
// or a stronger kind. A path both read-only and writable is writable.
func (c Config) Plan(r Request) (Plan, error) {
	c = c.WithDefaults()
	if len(r.Argv) == 0 || !filepath.IsAbs(r.Argv[0]) {
		return Plan{}, errs.New(errs.InvalidArgument, "jail plan: argv must start with an absolute path")
	}
	if r.UID <= 0 {
		return Plan{}, errs.New(errs.InvalidArgument, "jail plan: uid %d", r.UID)
	}
	if !filepath.IsAbs(r.Dir) {
		return Plan{}, errs.New(errs.InvalidArgument, "jail plan: working directory %q is not absolute", r.Dir)
	}
	if err := jailexec.CheckEnv(r.Env); err != nil {
		return Plan{}, err
	}
	p := Plan{UID: r.UID, GID: r.UID, Groups: slices.Clone(r.Groups), Cgroup: r.Cgroup, Dir: r.Dir, Argv: slices.Clone(r.Argv), Env: slices.Clone(r.Env)}

	hide := make([]string, 0, len(c.Hide))
	for _, h := range c.Hide {
		hide = append(hide, filepath.Clean(h))
	}
	slices.Sort(hide)
	hide = slices.Compact(hide)
	for _, h := range hide {
		if !slices.ContainsFunc(p.Hide, func(o string) bool { return under(h, o) }) {
			p.Hide = append(p.Hide, h)
		}
	}

	rw := map[string]bool{}
	add := func(path string, write bool) error {
		if path == "" {
			return nil
		}
		if !filepath.IsAbs(path) {
			return errs.New(errs.InvalidArgument, "jail plan: path %q is not absolute", path)
		}
		path = filepath.Clean(path)
		rw[path] = rw[path] || write
		return nil
	}
	if err := add(r.Argv[0], false); err != nil {
		return Plan{}, err
	}
	for _, f := range r.ReadOnly {
		if err := add(f, false); err != nil {
			return Plan{}, err
		}
	}
	for _, f := range r.Writable {
		if err := add(f, true); err != nil {
			return Plan{}, err
		}
	}
	paths := make([]string, 0, len(rw))
	for f := range rw {
		paths = append(paths, f)
	}
	slices.Sort(paths)
	for _, f := range paths {
		mode := "r"
		if rw[f] {
			mode = "rw"
		}
		if f == filepath.Clean(r.Argv[0]) {
			mode = "x"
		}
		p.Check = append(p.Check, Access{Path: f, Mode: mode})
		if !slices.ContainsFunc(p.Hide, func(h string) bool { return under(f, h) }) {
			continue // visible anyway
		}
		covered := slices.ContainsFunc(p.Binds, func(b Bind) bool {
			return under(f, b.Path) && (!b.ReadOnly || !rw[f])
		})
		if !covered {
			p.Binds = append(p.Binds, Bind{Path: f, ReadOnly: !rw[f]})
		}
	}
	return p, nil
}

// under reports whether path is dir or inside it.
func under(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}
