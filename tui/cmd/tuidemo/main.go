// Command tuidemo runs the dashboard on this terminal against the in-memory
// fake backend, for trying the UI by hand:
//
//	go run ./tui/cmd/tuidemo [-admin] [-delay 300ms]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/tui/tuitest"
)

func main() {
	admin := flag.Bool("admin", false, "show every owner's VMs with an owner column, and the hosts view (h)")
	delay := flag.Duration("delay", 300*time.Millisecond, "fake delay per backend step")
	user := flag.String("user", "alice", "user name in the header")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	b := tuitest.NewSeededAt(time.Now().Add(-time.Hour))
	b.Now = time.Now
	b.SetHosts(tuitest.HostsAt(time.Now().Add(-time.Hour)))
	b.StepDelay = *delay
	err := tui.RunLocal(ctx, tui.Options{Backend: b, URL: b.URL, User: *user, Admin: *admin})
	if err != nil {
		fmt.Fprintln(os.Stderr, "tuidemo:", err)
		os.Exit(1)
	}
}
