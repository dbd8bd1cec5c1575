package cli

import (
	"flag"
	"io"
	"slices"
	"strings"
	"testing"
)

// FuzzParseInterspersed: the command parser never panics, never invents
// positionals, keeps their order, and takes everything after "--"
// literally.
func FuzzParseInterspersed(f *testing.F) {
	for _, s := range []string{"web --cpus 2", "web -- ls -la", "--tty web sh", "-", "--", "a --json b", "--cpus=3 x", "--bogus", "x --os"} {
		f.Add(s, 0)
		f.Add(s, 1)
	}
	f.Fuzz(func(t *testing.T, line string, literalAfter int) {
		if literalAfter < 0 || literalAfter > 3 {
			return
		}
		args := strings.Fields(line)
		fs := flag.NewFlagSet("fuzz", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.Int("cpus", 0, "")
		fs.String("os", "", "")
		fs.Bool("json", false, "")
		fs.Bool("tty", false, "")
		pos, err := parseInterspersed(fs, args, literalAfter)
		if err != nil {
			return
		}
		// Every positional is one of the arguments, in order.
		i := 0
		for _, p := range pos {
			for i < len(args) && args[i] != p {
				i++
			}
			if i == len(args) {
				t.Fatalf("parse(%q) = %q: %q is not an argument in order", args, pos, p)
			}
			i++
		}
		// What follows the first "--" is positional, verbatim.
		if k := slices.Index(args, "--"); k >= 0 && literalAfter == 0 {
			tail := args[k+1:]
			if len(pos) < len(tail) || !slices.Equal(pos[len(pos)-len(tail):], tail) {
				t.Fatalf("parse(%q) = %q: lost the literal tail %q", args, pos, tail)
			}
		}
	})
}
