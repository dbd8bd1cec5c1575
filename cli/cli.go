package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/starttrace"
	"github.com/minionsdev/minions/internal/textsafe"
	"github.com/minionsdev/minions/service"
)

// Env is where a command runs: its streams and how it reaches Minions.
type Env struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
	// Interactive is true when a person is at a terminal (asks before
	// destructive operations instead of requiring --yes).
	Interactive bool
	// TTY is true when Stdout is a terminal (progress display, colours).
	TTY bool
	// Remote marks a run on behalf of an SSH gateway user: host-only
	// commands (init, serve, image build, jail-exec) are refused.
	Remote bool
	// Open returns the backend for the global options. It is called at
	// most once per command, only by commands that need it.
	Open func(ctx context.Context, g *Global) (service.Backend, error)
	// Extra are commands the composition root adds to the tree.
	Extra []*Command
	// VersionInfo, when set, adds to `minions version` on the host (schema
	// and agent versions); it must not create or change anything.
	VersionInfo func(ctx context.Context, g *Global) map[string]any
}

// Global are the options every command accepts.
type Global struct {
	JSON     bool
	StateDir string
	RunDir   string
	Host     string
	APIKey   string
	Yes      bool
}

// Command is one node of the command tree.
type Command struct {
	Name     string
	Usage    string // arguments after the name, e.g. "NAME [--follow]"
	Summary  string
	HostOnly bool // not offered through the SSH gateway
	Hidden   bool
	Flags    func(fs *flag.FlagSet)
	Run      func(ctx context.Context, x *Ctx) error
	Sub      []*Command
	MinArgs  int
	MaxArgs  int // -1: any
	// LiteralAfter > 0: after that many positionals the rest of the
	// arguments is taken literally (exec's command).
	LiteralAfter int
}

// Ctx is what a running command gets.
type Ctx struct {
	*Env
	G    *Global
	FS   *flag.FlagSet
	Args []string
	cmd  *Command
	path string
	be   service.Backend
}

// Backend opens (once) and returns the backend.
func (x *Ctx) Backend(ctx context.Context) (service.Backend, error) {
	if x.be != nil {
		return x.be, nil
	}
	if x.Open == nil {
		return nil, errs.New(errs.Unavailable, "no backend")
	}
	be, err := x.Open(ctx, x.G)
	if err != nil {
		return nil, err
	}
	x.be = be
	return be, nil
}

// Print writes v as indented JSON with --json, else calls text.
func (x *Ctx) Print(v any, text func(w io.Writer)) error {
	if x.G.JSON {
		enc := json.NewEncoder(x.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	text(x.Stdout)
	return nil
}

// Run runs args (without the program name) and returns the exit code.
func Run(ctx context.Context, env *Env, args []string) int {
	if env.Getenv == nil {
		env.Getenv = os.Getenv
	}
	root := Tree(env.Extra...)
	g := &Global{}
	x, err := resolve(env, root, g, args)
	if err == nil {
		err = x.cmd.Run(ctx, x)
		starttrace.Mark("cli: command ran")
	}
	if x != nil && x.be != nil {
		x.be.Close()
		starttrace.Mark("cli: backend closed")
	}
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return int(ee)
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	// Messages may quote a guest (its console, its agent): no terminal
	// control in them.
	msg := textsafe.CleanText(err.Error())
	if g.JSON {
		json.NewEncoder(env.Stdout).Encode(map[string]any{"error": map[string]string{"code": errs.Code(err), "message": msg}})
	} else {
		fmt.Fprintf(env.Stderr, "minions: %s\n", msg)
	}
	return errs.ExitCode(err)
}

// exitError carries a process exit code that is not an error of Minions
// (the exit status of a command run in a guest).
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

func resolve(env *Env, root *Command, g *Global, args []string) (*Ctx, error) {
	cmd := root
	path := "minions"
	// Leading global flags and then the command path.
	var rest []string
	for len(args) > 0 {
		a := args[0]
		if strings.HasPrefix(a, "-") {
			rest = append(rest, a)
			args = args[1:]
			// A global flag's value travels with it.
			if i := strings.IndexByte(a, '='); i < 0 && takesValue(a) && len(args) > 0 {
				rest = append(rest, args[0])
				args = args[1:]
			}
			continue
		}
		var next *Command
		for _, s := range cmd.Sub {
			if s.Name == a {
				next = s
			}
		}
		if next == nil {
			break
		}
		if next.HostOnly && env.Remote {
			return nil, errs.New(errs.PermissionDenied, "%s is only available on the host", a)
		}
		cmd, path = next, path+" "+a
		args = args[1:]
	}
	args = append(rest, args...)
	if cmd.Run == nil {
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			return nil, errs.New(errs.InvalidArgument, "unknown command %q for %s (see `%s help`)", args[0], path, path)
		}
		cmd = &Command{Name: cmd.Name, Sub: cmd.Sub, MaxArgs: -1, Run: func(ctx context.Context, x *Ctx) error {
			usage(x.Stdout, x.path, x.cmd)
			return nil
		}}
	}
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.BoolVar(&g.JSON, "json", false, "print JSON")
	fs.StringVar(&g.StateDir, "state-dir", "", "state directory (default $MINIONS_STATE_DIR or /var/lib/minions)")
	fs.StringVar(&g.RunDir, "run-dir", "", "runtime directory (default $MINIONS_RUN_DIR or <state-dir>/run)")
	fs.StringVar(&g.Host, "host", "", "URL of a remote minions daemon (default $MINIONS_HOST); for create, a bare NAME (no :, / or .) pins the VM to that cluster host")
	fs.StringVar(&g.APIKey, "api-key", "", "API token for --host (default $MINIONS_API_KEY)")
	fs.BoolVar(&g.Yes, "yes", false, "do not ask for confirmation")
	help := fs.Bool("help", false, "show help")
	fs.BoolVar(help, "h", false, "show help")
	if cmd.Flags != nil {
		cmd.Flags(fs)
	}
	x := &Ctx{Env: env, G: g, FS: fs, cmd: cmd, path: path}
	pos, err := parseInterspersed(fs, args, cmd.LiteralAfter)
	if err != nil {
		return x, errs.New(errs.InvalidArgument, "%s: %v", path, err)
	}
	if *help {
		usage(env.Stdout, path, cmd)
		return x, flag.ErrHelp
	}
	if g.StateDir == "" {
		g.StateDir = env.Getenv("MINIONS_STATE_DIR")
	}
	if g.RunDir == "" {
		g.RunDir = env.Getenv("MINIONS_RUN_DIR")
	}
	if g.Host == "" {
		g.Host = env.Getenv("MINIONS_HOST")
	}
	if g.APIKey == "" {
		g.APIKey = env.Getenv("MINIONS_API_KEY")
	}
	if len(pos) < cmd.MinArgs || (cmd.MaxArgs >= 0 && len(pos) > cmd.MaxArgs) {
		return x, errs.New(errs.InvalidArgument, "usage: %s %s", path, cmd.Usage)
	}
	x.Args = pos
	return x, nil
}

func takesValue(flagArg string) bool {
	switch strings.TrimLeft(flagArg, "-") {
	case "state-dir", "run-dir", "host", "api-key":
		return true
	}
	return false
}

// parseInterspersed parses flags anywhere among the arguments; "--" ends
// flag parsing and everything after it is positional. With literalAfter > 0,
// once that many positionals are seen the rest is positional too (the
// command run by exec).
func parseInterspersed(fs *flag.FlagSet, args []string, literalAfter int) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if literalAfter > 0 && len(pos) >= literalAfter {
			if args[0] == "--" {
				args = args[1:]
				if len(args) == 0 {
					break
				}
			}
			if !strings.HasPrefix(args[0], "-") {
				return append(pos, args...), nil
			}
		}
		a := args[0]
		if a == "--" {
			return append(pos, args[1:]...), nil
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			args = args[1:]
			continue
		}
		// Parse exactly the flags up to the next positional or "--".
		n := 1
		for n < len(args) && strings.HasPrefix(args[n], "-") && args[n] != "--" && args[n] != "-" {
			n++
		}
		// A flag that takes a value may swallow one following word.
		chunk := args[:n]
		if n < len(args) && args[n] != "--" {
			last := strings.TrimLeft(chunk[len(chunk)-1], "-")
			if f := fs.Lookup(last); f != nil && !strings.Contains(last, "=") {
				if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); !ok || !bf.IsBoolFlag() {
					chunk = args[:n+1]
					n++
				}
			}
		}
		if err := fs.Parse(chunk); err != nil {
			return nil, err
		}
		args = args[n:]
	}
	return pos, nil
}

func usage(w io.Writer, path string, cmd *Command) {
	if cmd.Summary != "" {
		fmt.Fprintf(w, "%s\n\n", cmd.Summary)
	}
	if cmd.Run != nil && cmd.Usage != "" {
		fmt.Fprintf(w, "Usage: %s %s\n", path, cmd.Usage)
	}
	if len(cmd.Sub) > 0 {
		fmt.Fprintf(w, "Usage: %s <command> [flags]\n\nCommands:\n", path)
		subs := append([]*Command(nil), cmd.Sub...)
		sort.Slice(subs, func(i, j int) bool { return subs[i].Name < subs[j].Name })
		for _, s := range subs {
			if s.Hidden {
				continue
			}
			fmt.Fprintf(w, "  %-12s %s\n", s.Name, s.Summary)
		}
		fmt.Fprintln(w, "\nEvery command accepts --json. Run `minions <command> --help` for its flags.")
	}
}

// confirm asks on a terminal or requires --yes.
func (x *Ctx) confirm(what string) error {
	if x.G.Yes {
		return nil
	}
	if !x.Interactive {
		return errs.New(errs.FailedPrecondition, "%s: pass --yes to confirm", what)
	}
	fmt.Fprintf(x.Stderr, "%s? [y/N] ", what)
	var line string
	fmt.Fscanln(x.Stdin, &line)
	if strings.EqualFold(line, "y") || strings.EqualFold(line, "yes") {
		return nil
	}
	return errs.New(errs.FailedPrecondition, "cancelled")
}
