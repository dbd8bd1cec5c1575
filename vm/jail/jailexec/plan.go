package jailexec

import (
	"fmt"
	"strings"
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
	fmt.Fprintf(&b, "exec %s\n", strings.Join(p.Argv, " "))
	return b.String()
}
