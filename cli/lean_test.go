package cli

import "testing"

func TestCommandNameAndRuns(t *testing.T) {
	for _, c := range []struct {
		args []string
		name string
		runs bool
	}{
		{nil, "", false},
		{[]string{"--json"}, "", false},
		{[]string{"create", "web"}, "create", true},
		{[]string{"--state-dir", "/s", "create", "web"}, "create", true},
		{[]string{"--state-dir=/s", "--json", "list"}, "list", true},
		{[]string{"--host", "h", "exec", "a", "true"}, "exec", true},
		{[]string{"serve", "--http-bind", ":80"}, "serve", false},
		{[]string{"init"}, "init", false},
		{[]string{"image", "build"}, "image", false},
		{[]string{"help"}, "help", false},
		{[]string{"expose", "web", "8080"}, "expose", false},
		{[]string{"version"}, "version", true},
		{[]string{"--", "create"}, "", false},
		{[]string{"no-such-command"}, "no-such-command", false},
	} {
		if got := CommandName(c.args); got != c.name {
			t.Errorf("CommandName(%q) = %q, want %q", c.args, got, c.name)
		}
		if got := Runs(c.args, "help", "expose", "share", "domain"); got != c.runs {
			t.Errorf("Runs(%q) = %v, want %v", c.args, got, c.runs)
		}
	}
}
