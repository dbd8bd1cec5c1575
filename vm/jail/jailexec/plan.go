package jailexec

import (
	"fmt"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
)

// Bind is a path bound back into a hidden directory, at the same path.
type Bind struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"ro,omitempty"`
}

// Access is a path the jailed process must be able to use, checked as its
// uid before exec so that a permission problem is a clear error instead of
// a hypervisor failing half-way. Mode is "r", "rw" or "x".
type Access struct {
	Path string `json:"path"`
	Mode string `json:"mode"`
}

// Plan is everything Main does for one process. It is pure data, computed
// by Config.Plan and passed to the launcher as JSON.
type Plan struct {
	UID    int      `json:"uid"`
	GID    int      `json:"gid"`
	Groups []int    `json:"groups,omitempty"` // supplementary groups (device access)
	Cgroup string   `json:"cgroup,omitempty"` // joined before exec ("" none)
	Hide   []string `json:"hide,omitempty"`   // covered with an empty tmpfs
	Binds  []Bind   `json:"binds,omitempty"`  // bound back, in this order
	Check  []Access `json:"check,omitempty"`
	Dir    string   `json:"dir"`
	Argv   []string `json:"argv"` // Argv[0] is an absolute path
	// Env is added to CleanEnv for the exec'd process, NAME=value each
	// (the agent relay's GOMAXPROCS=1: a Go runtime's start-up with one
	// P per core leaves memory resident that a later GOMAXPROCS(1) does
	// not give back).
	Env []string `json:"env,omitempty"`
}

// String renders p one item a line, for golden tests and logs.
func (p Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "uid %d gid %d groups %v\n", p.UID, p.GID, p.Groups)
	fmt.Fprintf(&b, "cgroup %s\n", p.Cgroup)
	for _, h := range p.Hide {
		fmt.Fprintf(&b, "hide %s\n", h)
	}
	for _, m := range p.Binds {
		kind := "rw"
		if m.ReadOnly {
			kind = "ro"
		}
		fmt.Fprintf(&b, "bind %s %s\n", kind, m.Path)
	}
	for _, a := range p.Check {
		fmt.Fprintf(&b, "check %s %s\n", a.Mode, a.Path)
	}
	fmt.Fprintf(&b, "dir %s\n", p.Dir)
	for _, e := range p.Env {
		fmt.Fprintf(&b, "env %s\n", e)
	}
	fmt.Fprintf(&b, "exec %s\n", strings.Join(p.Argv, " "))
	return b.String()
}

// CheckEnv reports whether every entry of env is NAME=value with a name
// of letters, digits and underscores, and none sets PATH (CleanEnv's).
func CheckEnv(env []string) error {
	for _, e := range env {
		name, _, ok := strings.Cut(e, "=")
		valid := ok && name != "" && name != "PATH"
		for i := 0; valid && i < len(name); i++ {
			c := name[i]
			valid = c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' && i > 0
		}
		if !valid {
			return errs.New(errs.InvalidArgument, "jail plan: environment entry %q is not NAME=value (or sets PATH)", e)
		}
	}
	return nil
}
