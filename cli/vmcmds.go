package cli

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/units"
	"github.com/minionsdev/minions/service"
	"golang.org/x/term"
)

func vmCommands() []*Command {
	return []*Command{
		createCmd(),
		{Name: "list", Summary: "List VMs", MaxArgs: 0, Run: runList},
		{Name: "show", Usage: "NAME", Summary: "Show one VM", MinArgs: 1, MaxArgs: 1, Run: runShow},
		{Name: "start", Usage: "NAME", Summary: "Start a stopped VM", MinArgs: 1, MaxArgs: 1, Run: func(ctx context.Context, x *Ctx) error {
			return x.lifecycle(ctx, "start", func(be service.Backend, p service.Progress) (service.VM, error) { return be.Start(ctx, x.Args[0], p) })
		}},
		{Name: "stop", Usage: "NAME", Summary: "Power a VM off (its disk is kept)", MinArgs: 1, MaxArgs: 1, Run: func(ctx context.Context, x *Ctx) error {
			return x.lifecycle(ctx, "stop", func(be service.Backend, p service.Progress) (service.VM, error) {
				p("stop")
				return be.Stop(ctx, x.Args[0])
			})
		}},
		{Name: "restart", Usage: "NAME", Summary: "Stop and start a VM", MinArgs: 1, MaxArgs: 1, Run: func(ctx context.Context, x *Ctx) error {
			return x.lifecycle(ctx, "restart", func(be service.Backend, p service.Progress) (service.VM, error) { return be.Restart(ctx, x.Args[0], p) })
		}},
		{Name: "destroy", Usage: "NAME [--yes]", Summary: "Delete a VM, its disk and snapshots", MinArgs: 1, MaxArgs: 1, Run: runDestroy},
		{Name: "exec", Usage: "NAME [--tty] [--] COMMAND [ARGS...]", Summary: "Run a command in a VM", MinArgs: 2, MaxArgs: -1, LiteralAfter: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.Bool("tty", false, "allocate a terminal")
				fs.Bool("t", false, "allocate a terminal")
				fs.String("env", "", "comma-separated KEY=VALUE pairs")
			}, Run: runExec},
		{Name: "ssh", Usage: "NAME", Summary: "Open a shell in a VM", MinArgs: 1, MaxArgs: 1, Run: runShell},
		{Name: "status", Usage: "NAME", Summary: "Guest status from the agent: uptime, memory, disk, load", MinArgs: 1, MaxArgs: 1, Run: runStatus},
		{Name: "logs", Usage: "NAME [--follow]", Summary: "Print the serial console", MinArgs: 1, MaxArgs: 1,
			Flags: func(fs *flag.FlagSet) {
				fs.Bool("follow", false, "keep printing new output")
				fs.Bool("f", false, "keep printing new output")
			}, Run: runLogs},
		{Name: "whoami", Summary: "Show who you are to Minions", Run: func(ctx context.Context, x *Ctx) error {
			be, err := x.Backend(ctx)
			if err != nil {
				return err
			}
			c, err := be.Whoami(ctx)
			if err != nil {
				return err
			}
			return x.Print(map[string]any{"user": c.Name, "admin": c.Admin}, func(w io.Writer) {
				role := "user"
				if c.Admin {
					role = "admin"
				}
				fmt.Fprintf(w, "%s (%s)\n", c.Name, role)
			})
		}},
		sshKeyCmd(),
	}
}

func createCmd() *Command {
	return &Command{Name: "create", Usage: "NAME [--cpus N] [--memory MiB] [--disk GiB] [--os IMAGE] [--ssh-key FILE] [--restart POLICY] [--cold] [--host HOST]", Summary: "Create and boot a VM (restored from a warm template when there is one; --host NAME pins it to a cluster host)",
		MinArgs: 1, MaxArgs: 1,
		Flags: func(fs *flag.FlagSet) {
			fs.Int("cpus", 0, "vCPUs (default 1)")
			fs.Int("memory", 0, "memory in MiB (default 512)")
			fs.Int("disk", 0, "disk in GiB (default: 2, or the image's size)")
			fs.String("os", "", "image: minimal, debian, or IMAGE@VERSION (default minimal)")
			fs.String("image", "", "same as --os")
			fs.String("ssh-key", "", "public key file to authorize for root (default: yours, from ~/.ssh)")
			fs.String("restart", "", "restart policy: no, on-failure or always (default always)")
			fs.Bool("cold", false, "boot from the image even when a warm template exists")
		},
		Run: func(ctx context.Context, x *Ctx) error {
			if err := positiveFlags(x.FS, "cpus", "memory", "disk"); err != nil {
				return err
			}
			pin := x.ClusterHostPin()
			req := service.CreateRequest{Host: pin, Name: x.Args[0], CPUs: intFlag(x.FS, "cpus"), MemoryMiB: intFlag(x.FS, "memory"), DiskGiB: intFlag(x.FS, "disk"),
				Image: strFlag(x.FS, "os"), Restart: strFlag(x.FS, "restart"), Cold: boolFlag(x.FS, "cold")}
			if req.Image == "" {
				req.Image = strFlag(x.FS, "image")
			}
			keys, err := x.invokerKeys(strFlag(x.FS, "ssh-key"))
			if err != nil {
				return err
			}
			req.SSHKeys = keys
			return x.lifecycle(ctx, "create", func(be service.Backend, p service.Progress) (service.VM, error) { return be.Create(ctx, req, p) })
		}}
}

// invokerKeys returns the SSH public keys to inject for the person running
// the CLI: --ssh-key FILE, else the invoking user's ~/.ssh/*.pub (the sudo
// user's when run through sudo). Only on the host.
func (x *Ctx) invokerKeys(file string) ([]string, error) {
	if file != "" {
		if x.Remote {
			return nil, errs.New(errs.InvalidArgument, "--ssh-key reads a local file; over ssh, register keys with `ssh-key add`")
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, errs.New(errs.InvalidArgument, "read ssh key: %v", err)
		}
		return nonEmptyLines(string(b)), nil
	}
	if x.Remote || x.G.Host != "" {
		return nil, nil
	}
	home := x.Getenv("HOME")
	if su := x.Getenv("SUDO_USER"); su != "" && su != "root" {
		home = "/home/" + su
		if b, err := os.ReadFile("/etc/passwd"); err == nil {
			for _, l := range strings.Split(string(b), "\n") {
				f := strings.Split(l, ":")
				if len(f) > 5 && f[0] == su {
					home = f[5]
				}
			}
		}
	}
	var keys []string
	for _, n := range []string{"id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"} {
		if b, err := os.ReadFile(home + "/.ssh/" + n); err == nil {
			keys = append(keys, nonEmptyLines(string(b))...)
		}
	}
	return keys, nil
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out
}

func intFlag(fs *flag.FlagSet, name string) int {
	f := fs.Lookup(name)
	if f == nil {
		return 0
	}
	return f.Value.(flag.Getter).Get().(int)
}

// positiveFlags rejects numeric flags given explicitly as zero or less
// (0 is how "not given" reaches the service).
func positiveFlags(fs *flag.FlagSet, names ...string) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		for _, n := range names {
			if f.Name == n && err == nil {
				if v, ok := f.Value.(flag.Getter).Get().(int); ok && v <= 0 {
					err = errs.New(errs.InvalidArgument, "invalid %s %d: must be positive", n, v)
				}
			}
		}
	})
	return err
}

func strFlag(fs *flag.FlagSet, name string) string {
	f := fs.Lookup(name)
	if f == nil {
		return ""
	}
	return f.Value.String()
}

func boolFlag(fs *flag.FlagSet, names ...string) bool {
	for _, n := range names {
		if f := fs.Lookup(n); f != nil && f.Value.String() == "true" {
			return true
		}
	}
	return false
}

// lifecycle runs a long VM operation with progress and prints the VM.
func (x *Ctx) lifecycle(ctx context.Context, verb string, fn func(service.Backend, service.Progress) (service.VM, error)) error {
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	name := ""
	if len(x.Args) > 0 {
		name = x.Args[0]
	}
	pr := newProgress(x.Stderr, x.TTY && !x.G.JSON, verb+" "+name)
	v, err := fn(be, pr.step)
	pr.done(err)
	if err != nil {
		return err
	}
	return x.Print(v, func(w io.Writer) {
		printVMs(w, []service.VM{v})
		if v.Boot != "" {
			fmt.Fprintf(w, "boot: %s\n", v.Boot)
		}
		if m := v.Move; m != nil {
			paused := ""
			if m.PauseMS > 0 {
				paused = fmt.Sprintf(" (guest paused about %d ms)", m.PauseMS)
			}
			fmt.Fprintf(w, "moved (%s): downtime %d ms%s, whole move %.1f s\n", m.Mode, m.DowntimeMS, paused, float64(m.WallMS)/1000)
		}
		for _, m := range v.Warnings {
			fmt.Fprintf(w, "warning: %s\n", m)
		}
	})
}

func runList(ctx context.Context, x *Ctx) error {
	return call(ctx, x, func(be service.Backend) ([]service.VM, error) { return be.List(ctx) }, func(w io.Writer, vms []service.VM) {
		if len(vms) == 0 {
			fmt.Fprintln(w, "no vms yet: create one with `minions create NAME`")
			return
		}
		printVMs(w, vms)
	})
}

func printVMs(w io.Writer, vms []service.VM) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hosts := slices.ContainsFunc(vms, func(v service.VM) bool { return v.Host != "" })
	if hosts {
		fmt.Fprint(tw, "HOST\t")
	}
	fmt.Fprintln(tw, "NAME\tSTATUS\tIP\tCPUS\tMEMORY\tDISK\tIMAGE\tPID")
	for _, v := range vms {
		if hosts {
			fmt.Fprintf(tw, "%s\t", cmp.Or(v.Host, "-"))
		}
		pid := "-"
		if v.PID > 0 {
			pid = fmt.Sprint(v.PID)
		}
		status := v.Status
		if v.Note != "" {
			status += " (" + v.Note + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%d GiB\t%s\t%s\n", v.Name, status, v.IP, v.CPUs, v.MemoryMiB, v.DiskGiB, shortImage(v.Image), pid)
	}
	tw.Flush()
}

func shortImage(ref string) string {
	os, _, _ := strings.Cut(ref, "@")
	return os
}

func runShow(ctx context.Context, x *Ctx) error {
	return call(ctx, x, func(be service.Backend) (service.VM, error) { return be.Get(ctx, x.Args[0]) }, func(w io.Writer, v service.VM) {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "name\t%s\nid\t%s\nowner\t%s\nstatus\t%s\nimage\t%s\nip\t%s\nmac\t%s\ncpus\t%d\nmemory\t%d MiB\ndisk\t%d GiB\ncreated\t%s\n",
			v.Name, v.ID, v.Owner, v.Status, v.Image, v.IP, v.MAC, v.CPUs, v.MemoryMiB, v.DiskGiB, v.CreatedAt.Format(time.RFC3339))
		if v.Host != "" {
			fmt.Fprintf(tw, "host\t%s\n", v.Host)
		}
		if v.PID > 0 {
			fmt.Fprintf(tw, "pid\t%d\nstarted\t%s\n", v.PID, v.StartedAt.Format(time.RFC3339))
		}
		if v.Note != "" {
			fmt.Fprintf(tw, "note\t%s\n", v.Note)
		}
		printRestart(tw, v)
		tw.Flush()
	})
}

func runDestroy(ctx context.Context, x *Ctx) error {
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	name := x.Args[0]
	if _, err := be.Get(ctx, name); err != nil {
		return err
	}
	if err := x.confirm("destroy vm " + name + " and its disk and snapshots"); err != nil {
		return err
	}
	if err := be.Destroy(ctx, name); err != nil {
		return err
	}
	return x.Print(map[string]any{"destroyed": name}, func(w io.Writer) { fmt.Fprintf(w, "destroyed %s\n", name) })
}

func runExec(ctx context.Context, x *Ctx) error {
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	tty := boolFlag(x.FS, "tty", "t")
	req := service.ExecRequest{Argv: x.Args[1:], Stdin: x.Stdin, Stdout: x.Stdout, Stderr: x.Stderr, TTY: tty}
	if env := strFlag(x.FS, "env"); env != "" {
		req.Env = map[string]string{}
		for _, kv := range strings.Split(env, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || k == "" {
				return errs.New(errs.InvalidArgument, "invalid --env entry %q: want KEY=VALUE", kv)
			}
			req.Env[k] = v
		}
	}
	return x.runInGuest(ctx, be, x.Args[0], req)
}

func runShell(ctx context.Context, x *Ctx) error {
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	return x.runInGuest(ctx, be, x.Args[0], service.ExecRequest{Stdin: x.Stdin, Stdout: x.Stdout, Stderr: x.Stderr, TTY: true})
}

// runInGuest runs req with the local terminal in raw mode when it asks for
// a TTY, forwarding window size changes and signals, and returns the
// guest's exit status as ours.
func (x *Ctx) runInGuest(ctx context.Context, be service.Backend, name string, req service.ExecRequest) error {
	if f, ok := x.Stdin.(*os.File); ok && req.TTY && term.IsTerminal(int(f.Fd())) {
		old, err := term.MakeRaw(int(f.Fd()))
		if err == nil {
			defer term.Restore(int(f.Fd()), old)
		}
		req.Term = x.Getenv("TERM")
		if w, h, err := term.GetSize(int(f.Fd())); err == nil {
			req.Width, req.Height = w, h
		}
		resize := make(chan service.WindowSize, 1)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(int(f.Fd())); err == nil {
					select {
					case resize <- service.WindowSize{Width: w, Height: h}:
					default:
					}
				}
			}
		}()
		req.Resize = resize
	} else if !req.TTY {
		sigs := make(chan string, 4)
		ch := make(chan os.Signal, 4)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
		defer signal.Stop(ch)
		go func() {
			for s := range ch {
				name := map[os.Signal]string{syscall.SIGINT: "INT", syscall.SIGTERM: "TERM", syscall.SIGHUP: "HUP"}[s]
				select {
				case sigs <- name:
				default:
				}
			}
		}()
		req.Signals = sigs
	}
	code, err := be.Exec(ctx, name, req)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError(code)
	}
	return nil
}

func runStatus(ctx context.Context, x *Ctx) error {
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	st, err := be.Status(ctx, x.Args[0])
	if err != nil {
		return err
	}
	// The guest wrote these strings (and a remote server may not have
	// cleaned them): no terminal control reaches the screen.
	st = service.CleanGuestStatus(st)
	return x.Print(st, func(w io.Writer) { printStatus(w, st) })
}

func printStatus(w io.Writer, st proto.Status) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "hostname\t%s\nkernel\t%s\nuptime\t%s\nload\t%.2f %.2f %.2f\nmemory\t%s free of %s\ndisk\t%s free of %s\nprocesses\t%d\naddresses\t%s\nagent\t%s\n",
		st.Hostname, st.Kernel, (time.Duration(st.UptimeS * float64(time.Second))).Round(time.Second), st.Load[0], st.Load[1], st.Load[2],
		units.Bytes(st.MemAvailable), units.Bytes(st.MemTotal), units.Bytes(st.DiskFree), units.Bytes(st.DiskTotal), st.Procs, strings.Join(st.Addrs, ", "), st.AgentVersion)
	if st.AgentWarning != "" {
		fmt.Fprintf(tw, "warning\t%s\n", st.AgentWarning)
	}
	tw.Flush()
}

func runLogs(ctx context.Context, x *Ctx) error {
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	follow := boolFlag(x.FS, "follow", "f")
	if x.G.JSON {
		var sb strings.Builder
		if err := be.Logs(ctx, x.Args[0], false, &sb); err != nil {
			return err
		}
		return x.Print(map[string]any{"name": x.Args[0], "console": sb.String()}, nil)
	}
	if follow {
		var cancel context.CancelFunc
		ctx, cancel = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer cancel()
	}
	return be.Logs(ctx, x.Args[0], follow, x.Stdout)
}

func sshKeyCmd() *Command {
	return &Command{Name: "ssh-key", Summary: "Manage your SSH public keys", Sub: []*Command{
		{Name: "add", Usage: "[FILE|-]", Summary: "Register a key you hold (signs a challenge with it; over ssh: the key you logged in with)", MaxArgs: 1, Run: sshKeyAdd},
		{Name: "list", Summary: "List your keys", Run: func(ctx context.Context, x *Ctx) error {
			return call(ctx, x, func(be service.Backend) ([]service.SSHKey, error) { return be.ListSSHKeys(ctx) }, func(w io.Writer, keys []service.SSHKey) { printKeys(w, keys) })
		}},
		{Name: "rm", Usage: "ID|FINGERPRINT", Summary: "Remove one of your keys", MinArgs: 1, MaxArgs: 1, Run: func(ctx context.Context, x *Ctx) error {
			return do(ctx, x, func(be service.Backend) error { return be.RemoveSSHKey(ctx, x.Args[0]) }, map[string]string{"removed": x.Args[0]}, fmt.Sprintf("removed %s", x.Args[0]))
		}},
	}}
}

func printKeys(w io.Writer, keys []service.SSHKey) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tTYPE\tFINGERPRINT\tCOMMENT")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.ID, k.Type, k.Fingerprint, k.Comment)
	}
	tw.Flush()
}

// keyAddTwoWays names the two ways to prove that one holds a key.
const keyAddTwoWays = "prove you hold the key: over ssh, `ssh-key add` with no argument registers the key this session logged in with; " +
	"with the minions CLI, `minions ssh-key add KEY.pub` signs a challenge with its private key (the key file or ssh-agent)"

// sshKeyAdd registers keys with proof of possession: over SSH the key the
// session authenticated with, otherwise each key of FILE (or stdin) signed
// with its private key file or through ssh-agent.
func sshKeyAdd(ctx context.Context, x *Ctx) error {
	if x.Remote && len(x.Args) > 0 {
		return errs.New(errs.InvalidArgument, "over ssh, ssh-key add takes no argument: a public key alone proves nothing. To add a key, %s", keyAddTwoWays)
	}
	if !x.Remote && len(x.Args) == 0 {
		return errs.New(errs.InvalidArgument, "name the key to add: `minions ssh-key add ~/.ssh/id_ed25519.pub` (its private key file or ssh-agent signs a challenge)")
	}
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	var added []service.SSHKey
	if x.Remote {
		sk, ok := be.(sessionKeyAdder)
		if !ok {
			return errs.New(errs.FailedPrecondition, "this backend cannot see the key of your session; %s", keyAddTwoWays)
		}
		k, err := sk.AddSessionKey(ctx)
		if err != nil {
			return err
		}
		added = append(added, k)
	} else {
		keys, err := x.readKeysToProve(x.Args[0])
		if err != nil {
			return err
		}
		for _, k := range keys {
			proof, err := x.proveKey(ctx, be, k)
			if err != nil {
				return err
			}
			sk, err := be.AddSSHKey(ctx, proof)
			if err != nil {
				return err
			}
			added = append(added, sk)
		}
	}
	return x.Print(added, func(w io.Writer) { printKeys(w, added) })
}

// ClusterHostPin is the --host of create, move, copy and image warm: the
// global --host names a remote daemon by URL, but a bare name (no ':', '/'
// or '.') names a host of the cluster to pin the VM (or template) to. The
// pin is taken out of the global flag (the daemon is then $MINIONS_HOST's,
// if that is a URL, or the local one).
func (x *Ctx) ClusterHostPin() string {
	given := false // on the command line: $MINIONS_HOST names daemons only
	x.FS.Visit(func(f *flag.Flag) { given = given || f.Name == "host" })
	h := x.G.Host
	if !given || !isClusterHostName(h) {
		return ""
	}
	x.G.Host = x.Getenv("MINIONS_HOST")
	if isClusterHostName(x.G.Host) {
		x.G.Host = ""
	}
	return h
}

// isClusterHostName reports whether --host's value is a cluster host's
// name rather than a daemon's URL.
func isClusterHostName(s string) bool {
	return s != "" && !strings.ContainsAny(s, ":/.")
}
