package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestNoRegexpAtInit: every package of this module is linked into the one
// minions binary, so a regular expression compiled in a package-level
// variable is compiled at every start of every command (`minions version`
// included). Counted repetitions are the costly kind: `{0,127}` compiled
// into about a thousand allocations. Compile them on first use
// (sync.OnceValue); GODEBUG=inittrace=1 shows what is left (docs/costs.md).
func TestNoRegexpAtInit(t *testing.T) {
	atInit := regexp.MustCompile(`(?m)^(var\s+\w+|\t\w+)\s*=\s*regexp\.MustCompile\(`)
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || d.Name() == "e2e" || strings.HasPrefix(d.Name(), ".")) && path != "." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range atInit.FindAll(b, -1) {
			t.Errorf("%s: %s...: a regular expression compiled at package init (make it lazy)", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
