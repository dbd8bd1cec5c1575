package daemon

import (
	"context"
	"flag"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/consolelog"
)

// consoleLogCmd is the per-VM console logger the QEMU driver starts before
// QEMU: it copies the console FIFO into the VM's capped, rotating log and
// exits when QEMU closes the FIFO.
func consoleLogCmd() *cli.Command {
	return &cli.Command{Name: "console-log", Hidden: true, HostOnly: true, Usage: "--fifo FIFO --log FILE --max-bytes N",
		Summary: "Copy a VM's serial console into its size-capped log (started by the QEMU driver)",
		Flags: func(fs *flag.FlagSet) {
			fs.String("fifo", "", "FIFO the hypervisor writes the console to")
			fs.String("log", "", "console log file (rotated to FILE.1)")
			fs.Int64("max-bytes", consolelog.DefaultMaxBytes, "cap of the log and its rotated file together")
		},
		Run: func(ctx context.Context, x *cli.Ctx) error {
			fifo, path := x.FS.Lookup("fifo").Value.String(), x.FS.Lookup("log").Value.String()
			max, err := strconv.ParseInt(x.FS.Lookup("max-bytes").Value.String(), 10, 64)
			if fifo == "" || path == "" || err != nil {
				return errs.New(errs.InvalidArgument, "--fifo, --log and a numeric --max-bytes are required")
			}
			ctx, cancel := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
			defer cancel()
			signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
			return consolelog.Run(ctx, fifo, path, max)
		}}
}
