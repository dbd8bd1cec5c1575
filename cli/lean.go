package cli

import "strings"

// CommandName is the first command word of args as Run reads them (after
// the leading global flags and their values), or "" when there is none.
func CommandName(args []string) string {
	for len(args) > 0 {
		a := args[0]
		args = args[1:]
		if !strings.HasPrefix(a, "-") {
			return a
		}
		if a == "--" {
			return ""
		}
		if strings.IndexByte(a, '=') < 0 && takesValue(a) && len(args) > 0 {
			args = args[1:]
		}
	}
	return ""
}

// Runs reports whether the VM command tree (Tree without the composition
// root's commands) runs the command args name itself: false for no
// command, for a command it lacks (serve, init, image, ...) and for the
// names in except.
func Runs(args []string, except ...string) bool {
	name := CommandName(args)
	if name == "" {
		return false
	}
	for _, e := range except {
		if name == e {
			return false
		}
	}
	for _, c := range Tree().Sub {
		if c.Name == name {
			return true
		}
	}
	return false
}
