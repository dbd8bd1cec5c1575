// Command minions-relay is the QEMU driver's per-VM helper process. It is
// kept apart from the minions binary so that each VM pays only for what it
// runs: an agent relay that also logs the console takes 1.95 MiB of PSS
// with 3 VMs on the host (BenchmarkMemoryPerVM; about 1.2 MiB of its own
// plus a third of the 2.0-2.2 MiB of the binary's pages the three share)
// instead of 6.4 MiB as `minions agent-relay`, whose package
// initialisation and binary size were most of that. It links no
// log/slog, encoding/json, regexp or crypto (TestImportsLean). Its modes:
//
//	minions-relay agent-relay --serial SOCKET --listen SOCKET [--console-fd N --max-bytes N]
//	    relay the guest agent's virtio-serial socket to hybrid vsock
//	    (package relay) until QEMU exits or SIGTERM; with --console-fd it
//	    also logs the VM's console: descriptor N is the console FIFO
//	    (opened read-write by the driver, so it never reads end of file),
//	    N+1 the log and N+2 its rotated file (opened by the driver, which
//	    may write where the jailed relay may not; consolelog.NewFileWriter
//	    rotates them by copy). One process per VM then does both jobs;
//	minions-relay console-log --fifo FIFO --log FILE --max-bytes N
//	    copy the console FIFO into the VM's capped log (vm/consolelog)
//	    until QEMU closes the FIFO or SIGTERM;
//	minions-relay jail-exec PLAN_JSON
//	    the jail launcher (vm/jail/jailexec): join the VM's cgroup, hide
//	    the state, drop to the VM's uid and exec the plan's argv (QEMU or
//	    the agent relay). The minions binary has the same command, but
//	    starting it costs tens of milliseconds of package initialisation
//	    and page faults; this binary is small. The QEMU driver itself no
//	    longer execs a launcher (jail.Start builds the jail on a thread
//	    of its own process); the command stays the configured launcher
//	    (jail.Config.Command) for `minions doctor` and other callers.
//	    Exit status 125 when the launch fails.
//
// Unless GOGC, GOMEMLIMIT or GOMAXPROCS are set in its environment it runs
// with a small GC target, a soft memory limit and one P. The QEMU driver
// starts it with GOMAXPROCS=1 in its environment: a runtime that starts
// with one P per core keeps about 180 KiB more resident after dropping
// to one. The mode names
// are those of the minions subcommands they replace (and the driver's
// helper names), so `pgrep -f agent-relay` finds old and new relays
// alike. Exit status: 0 when done, 1 on an error, 2 on a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/relay"
	"github.com/minionsdev/minions/vm/jail/jailexec"
)

// gcPercent and memLimit bound the heap of a relay. Its live data is a
// few hundred KiB (runtime, one yamux session); the heap grows with
// garbage until the next GC, which the runtime starts at 4 MiB times
// GOGC/100, so a lower GOGC keeps a busy relay's heap smaller (a GC of so
// small a heap takes well under a millisecond); an idle relay is trimmed
// anyway (trimmer). memLimit is only a backstop against a runaway heap: a
// limit near what the runtime maps anyway (4-5 MiB, measured) makes the GC
// run back to back, burning CPU for nothing.
const (
	gcPercent = 50
	memLimit  = 32 << 20
)

// trimDelay is how long a relay stays idle (no client connection) before
// it returns its free memory to the OS: the runtime's background scavenger
// would keep about a heap goal's worth resident, for every VM.
const trimDelay = 500 * time.Millisecond

// trimmer returns free memory to the OS once the relay has been idle for
// trimDelay, and lets go of the code pages the busy spell touched
// (dropText); each call of idle restarts the wait. It collects once
// (debug.FreeOSMemory), after dropping the relay's spare copy buffers:
// every GC leaves some runtime metadata resident (mark bits, work
// buffers), and a second one cost an idle relay about 150 KiB more than
// one (measured with smaps, 3 relays).
type trimmer struct {
	mu sync.Mutex
	t  *time.Timer
}

func (tr *trimmer) idle() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.t == nil {
		tr.t = time.AfterFunc(trimDelay, func() { relay.ReleaseBuffers(); debug.FreeOSMemory(); dropText() })
		return
	}
	tr.t.Reset(trimDelay)
}

var errUsage = errors.New("usage")

func main() {
	if len(os.Args) > 1 && os.Args[1] == "jail-exec" {
		// Before anything else: the launcher becomes the jailed process.
		os.Exit(jailexec.Main(os.Args[2:]))
	}
	// No allocation profiling from here on (nothing reads it).
	runtime.MemProfileRate = 0
	// One P: fewer OS threads, each with its own stacks and caches; a
	// relay's work is copying between sockets, not computing.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(memLimit)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	err := run(ctx, os.Args[1:], os.Stderr)
	cancel()
	switch {
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "minions-relay:", err)
		os.Exit(1)
	}
}

const usage = `usage: minions-relay agent-relay --serial SOCKET --listen SOCKET [--console-fd N --max-bytes N]
       minions-relay console-log --fifo FIFO --log FILE --max-bytes N
       minions-relay jail-exec PLAN_JSON`

// run runs the mode named by args[0]; a usage error is reported on
// stderr and returned as errUsage.
func run(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return errUsage
	}
	fs := flag.NewFlagSet("minions-relay "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintln(stderr, usage) }
	bad := func(msg string) error {
		fmt.Fprintf(stderr, "minions-relay %s: %s\n%s\n", args[0], msg, usage)
		return errUsage
	}
	switch args[0] {
	case "agent-relay":
		serial := fs.String("serial", "", "QEMU's virtio-serial chardev socket")
		listen := fs.String("listen", "", "hybrid vsock socket to offer")
		conFD := fs.Int("console-fd", 0, "console FIFO descriptor (the log and its rotated file follow it)")
		max := fs.Int64("max-bytes", consolelog.DefaultMaxBytes, "cap of the console log and its rotated file together")
		if err := fs.Parse(args[1:]); err != nil {
			return errUsage
		}
		if *serial == "" || *listen == "" || fs.NArg() > 0 {
			return bad("--serial and --listen are required, and nothing else")
		}
		if *conFD != 0 && *conFD < 3 {
			return bad("--console-fd: want a descriptor of 3 or more")
		}
		log := &textLog{w: stderr, attrs: []any{"component", "relay"}}
		var stopConsole func()
		if *conFD > 0 {
			var err error
			if stopConsole, err = startConsole(*conFD, *max, log); err != nil {
				return err
			}
		}
		var tr trimmer
		tr.idle() // start-up is done: trim it even before the guest link is up
		err := relay.Run(ctx, relay.Config{SerialSocket: *serial, Listen: *listen, Log: log, Idle: tr.idle})
		if stopConsole != nil {
			stopConsole()
		}
		return err
	case "console-log":
		fifo := fs.String("fifo", "", "FIFO the hypervisor writes the console to")
		path := fs.String("log", "", "console log file (rotated to FILE.1)")
		max := fs.Int64("max-bytes", consolelog.DefaultMaxBytes, "cap of the log and its rotated file together")
		if err := fs.Parse(args[1:]); err != nil {
			return errUsage
		}
		if *fifo == "" || *path == "" || fs.NArg() > 0 {
			return bad("--fifo and --log are required, and nothing else")
		}
		return consolelog.Run(ctx, *fifo, *path, *max)
	default:
		return bad(fmt.Sprintf("unknown mode %q", args[0]))
	}
}

// consoleDrain is how long a stopping relay keeps copying what the console
// pipe still holds.
const consoleDrain = 200 * time.Millisecond

// startConsole logs the console from descriptors fd (the FIFO), fd+1 (the
// log) and fd+2 (its rotated file) on a goroutine; the returned stop
// drains the pipe and closes them. A write error of the log (a full disk)
// is logged once and the output dropped while it lasts: the pipe is
// always read, since a full one would block QEMU (this relay holds a
// write end, so QEMU never sees the reader gone).
func startConsole(fd int, maxBytes int64, log *textLog) (stop func(), err error) {
	var st syscall.Stat_t
	for i := range 3 {
		if err := syscall.Fstat(fd+i, &st); err != nil {
			return nil, fmt.Errorf("console descriptor %d: %w", fd+i, err)
		}
		if want := uint32(syscall.S_IFREG); i == 0 {
			want = syscall.S_IFIFO
			if st.Mode&syscall.S_IFMT != want {
				return nil, fmt.Errorf("console descriptor %d is not a fifo", fd)
			}
		} else if st.Mode&syscall.S_IFMT != want {
			return nil, fmt.Errorf("console descriptor %d is not a regular file", fd+i)
		}
	}
	// Pollable, so that stopping interrupts a pending read.
	if err := syscall.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("console fifo: %w", err)
	}
	fifo := os.NewFile(uintptr(fd), "console.fifo")
	w, err := consolelog.NewFileWriter(os.NewFile(uintptr(fd+1), "console.log"), os.NewFile(uintptr(fd+2), "console.log.1"), maxBytes)
	if err != nil {
		fifo.Close()
		return nil, fmt.Errorf("console log: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := consolelog.RunFile(ctx, fifo, &dropErrs{w: w, log: log}, consoleDrain); err != nil {
			log.Warn("console log stopped", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
		fifo.Close()
		w.Close()
	}, nil
}

// dropErrs writes to w, dropping what w refuses (logging the first error
// of each run of errors).
type dropErrs struct {
	w      io.Writer
	log    *textLog
	failed bool
}

func (d *dropErrs) Write(p []byte) (int, error) {
	if _, err := d.w.Write(p); err != nil {
		if !d.failed {
			d.log.Warn("console log write: output dropped", "err", err)
		}
		d.failed = true
	} else {
		d.failed = false
	}
	return len(p), nil
}
