package guestagent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mdlayher/vsock"

	"github.com/minionsdev/minions/guestagent/link"
	"github.com/minionsdev/minions/guestagent/proto"
	"golang.org/x/sys/unix"
)

// Options configures Run.
type Options struct {
	// PID1 makes the agent the init of the minimal image.
	PID1 bool
	// Cmdline is the kernel command line (default: /proc/cmdline).
	Cmdline string
	// HostKeyPath overrides Config.HostKeyPath.
	HostKeyPath string
	// PortWait bounds the wait for the virtio-serial port to appear when
	// there is no /dev/vsock (default 5 s).
	PortWait time.Duration
	Log      *slog.Logger
}

// Run is stage 2: it sets the system up (as PID 1 also the API
// filesystems, reaping and shutdown), starts the agent on every channel it
// finds, prints proto.ReadyMarker on the console and serves until ctx ends
// (PID 1: until it powers the machine off). It returns an error when the
// agent cannot start at all.
func Run(ctx context.Context, opts Options) error {
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	var reaper *Reaper
	if opts.PID1 {
		if err := SetupPID1(); err != nil {
			log.Warn("pid 1 setup", "err", err)
		}
		reaper = NewReaper()
		go reaper.Run(ctx)
	}
	raw := opts.Cmdline
	if raw == "" {
		b, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return fmt.Errorf("read kernel command line: %w", err)
		}
		raw = string(b)
	}
	cl, err := ParseCmdline(raw)
	if err != nil {
		return err
	}
	if cl.HostKey == nil {
		return errors.New("no minions.hostkey on the kernel command line")
	}
	if cl.Name != "" {
		if err := sethostname(cl.Name); err != nil {
			log.Warn("set hostname", "err", err)
		}
	}
	if cl.ID != "" {
		ensureMachineID(cl.ID, log)
	}
	if made, err := EnsureHostKeys("/etc/ssh"); err != nil {
		log.Warn("ssh host keys", "err", err)
	} else if len(made) > 0 {
		log.Debug("ssh host keys made", "keys", made)
	}
	go func() {
		if err := ConfigureNetwork(cl.IP, cl.Gateway, cl.DNS, 10*time.Second); err != nil {
			log.Warn("network", "err", err)
		}
	}()
	go growRoot(ctx, log)
	if !opts.PID1 {
		// An agent that ended while a re-identification had journald
		// stopped (quiet_linux.go) restarts it now.
		resumeStoppedJournald(log)
	}

	power := SystemPower
	if opts.PID1 {
		power = func(reboot bool) error { return PowerOff(reboot, 2*time.Second) }
	}
	srv, err := NewServer(Config{
		AuthorizedKey: cl.HostKey,
		HostKeyPath:   opts.HostKeyPath,
		Power:         power,
		Reaper:        reaper,
		Log:           log,
	})
	if err != nil {
		return err
	}
	handle := func(c net.Conn) { srv.ServeConn(ctx, c) }

	// AF_VSOCK when the VM has a virtio vsock device (/dev/vsock alone
	// only says the module is loaded).
	vsockOK := false
	if hasVsockDevice() {
		l, err := vsock.Listen(cl.VsockPort, nil)
		if err != nil {
			log.Warn("vsock listen", "port", cl.VsockPort, "err", err)
		} else {
			vsockOK = true
			context.AfterFunc(ctx, func() { l.Close() })
			go acceptLoop(l, handle, log)
		}
	}
	wait := opts.PortWait
	if wait == 0 {
		wait = 5 * time.Second
	}
	servePort := func(dev string) {
		go link.Serve(ctx, PortOpener(dev), handle, log.With("port", dev))
	}
	dev := ""
	if vsockOK {
		// Ready now; a virtio-serial port too, should one appear.
		go func() {
			if dev, err := waitPort(ctx, cl.PortName, wait); err == nil {
				servePort(dev)
			}
		}()
	} else {
		dev, err = waitPort(ctx, cl.PortName, wait)
		if err != nil {
			return fmt.Errorf("no agent channel: no vsock device and %w", err)
		}
		servePort(dev)
	}
	now := uptime().Milliseconds()
	userspace := "?"
	if ms, err := strconv.ParseInt(os.Getenv(stage1Env), 10, 64); err == nil {
		userspace = strconv.FormatInt(now-ms, 10)
	}
	modules := os.Getenv(stage1ModulesEnv)
	if modules == "" {
		modules = "?"
	}
	Console("%s (agent %d ms, userspace %s ms, modules %s ms, uptime %d ms)",
		proto.ReadyMarker, time.Since(start).Milliseconds(), userspace, modules, now)
	log.Info("agent ready", "port", dev, "vsock_port", cl.VsockPort)

	if !opts.PID1 {
		<-ctx.Done()
		return nil
	}
	RunRC(reaper, log)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGPWR)
	select {
	case sig := <-sigs:
		log.Info("signal: powering off", "signal", sig.String())
	case <-ctx.Done():
	}
	return PowerOff(false, 2*time.Second)
}

func acceptLoop(l net.Listener, handle func(net.Conn), log *slog.Logger) {
	for {
		c, err := l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Warn("vsock accept", "err", err)
			}
			return
		}
		go handle(c)
	}
}

func waitPort(ctx context.Context, name string, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		dev, err := FindPort(name)
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return dev, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ensureMachineID writes /etc/machine-id derived from the VM ID when the
// file is missing or empty (read-only roots are left alone).
func ensureMachineID(id string, log *slog.Logger) {
	if err := seedMachineID("/", id); err != nil {
		log.Debug("write machine id", "err", err)
	}
}

// MachineIDFor is the machine ID a VM with Minions ID id starts with.
func MachineIDFor(id string) string {
	sum := sha256.Sum256([]byte("minions:" + id))
	return hex.EncodeToString(sum[:16])
}

// seedMachineID writes root/etc/machine-id from the VM's ID unless it
// already holds one. Stage 1 does it before init starts, so systemd sees
// this VM's own ID: it neither takes one from elsewhere in the image (a
// D-Bus machine ID every VM of the image would share) nor runs first-boot
// presets.
func seedMachineID(root, id string) error {
	p := filepath.Join(root, "etc/machine-id")
	if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) != "" {
		return nil
	}
	if _, err := os.Stat(filepath.Join(root, "etc")); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(MachineIDFor(id)+"\n"), 0o444)
}

// hasVsockDevice reports whether a virtio vsock device is bound to its
// driver.
func hasVsockDevice() bool {
	devs, _ := filepath.Glob("/sys/bus/virtio/drivers/vmw_vsock_virtio_transport/virtio*")
	return len(devs) > 0
}

// growRoot grows the root filesystem to its disk in the background, off
// the path to "ready": a new VM's disk is larger than its image, and a
// disk resized while the VM was stopped is larger than its filesystem. In
// full images root may still be read-only this early, so it waits (up to
// two minutes) for systemd to remount it read-write.
func growRoot(ctx context.Context, log *slog.Logger) {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var fs unix.Statfs_t
		if err := unix.Statfs("/", &fs); err != nil {
			return
		}
		if fs.Flags&unix.ST_RDONLY == 0 {
			break
		}
		if time.Now().After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	start := time.Now()
	size, err := GrowFS("/")
	if err != nil {
		log.Debug("grow root filesystem", "err", err)
		return
	}
	log.Debug("root filesystem grown", "bytes", size, "ms", time.Since(start).Milliseconds())
}
