package daemon

import (
	"context"
	"encoding/json"
	"net"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/vm/jail"
	"github.com/minionsdev/minions/vsockcli"
)

// Commands are the host-only commands of the composition root: serve and
// the daemon's helpers. The commands that act on the host's installation
// directly (init, image, doctor, backup) live in hostcmd and backup.
func Commands() []*cli.Command {
	return []*cli.Command{
		jailExecCmd(),
		vsockCmd(),
		tuiCmd(),
		serveCmd(),
		configCmd(),
	}
}

// OpenLocal is cli.Env.Open for the host (local.Opener.OpenLocal) with
// the web proxy the daemon recorded (storedWeb) for the in-process web
// commands.
func OpenLocal(ctx context.Context, g *cli.Global) (service.Backend, error) {
	return local.Opener{Web: storedWeb}.OpenLocal(ctx, g)
}

func jailExecCmd() *cli.Command {
	return &cli.Command{Name: "jail-exec", Hidden: true, HostOnly: true, Usage: "PLAN_JSON", MinArgs: 1, MaxArgs: 1,
		Summary: "Start a VM process in its jail: cgroup, mount namespace, own uid (started by the QEMU driver)",
		Run: func(ctx context.Context, x *cli.Ctx) error {
			var p jail.Plan
			if err := json.Unmarshal([]byte(x.Args[0]), &p); err != nil {
				return errs.New(errs.InvalidArgument, "jail plan: %v", err)
			}
			return jail.Exec(p) // returns only on failure
		}}
}

func vsockCmd() *cli.Command {
	return &cli.Command{Name: "vsock", HostOnly: true, Usage: "NAME ping|status|exec CMD...", Summary: "Low-level guest agent debugging",
		MinArgs: 2, MaxArgs: -1, LiteralAfter: 2,
		Run: func(ctx context.Context, x *cli.Ctx) error {
			be, err := x.Backend(ctx)
			if err != nil {
				return err
			}
			// Raw agent access is for debugging on the host only: the
			// in-process backend has it, a daemon's API does not.
			ab, ok := be.(interface {
				Agent(ctx context.Context, name string) (*vsockcli.Client, error)
			})
			if !ok {
				return errs.New(errs.FailedPrecondition, "raw agent access is only available on the host itself (run as root with MINIONS_IN_PROCESS=1, without --host)")
			}
			cl, err := ab.Agent(ctx, x.Args[0])
			if err != nil {
				return err
			}
			defer cl.Close()
			return vsockcli.Debug(ctx, cl, x.Args[1:], x.Stdout)
		}}
}

func splitPort(hostport string) (string, string, error) {
	return net.SplitHostPort(hostport)
}
