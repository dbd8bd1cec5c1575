package qemu

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/jail"
)

// Accelerators accepted by Config.Accel.
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Vhost-vsock modes accepted by Config.VhostVsock.
const (
	VsockAuto = "auto" // vhost-vsock when /dev/vhost-vsock exists, else the relay
	VsockOn   = "on"   // always vhost-vsock
	VsockOff  = "off"  // always virtio-serial + relay
)

// Sandbox modes accepted by Config.Sandbox.
const (
	SandboxAuto = "auto" // seccomp sandbox when this QEMU has it
	SandboxOn   = "on"   // require it: Start fails without it (default)
	SandboxOff  = "off"  // never
)

// TCGWarning is said wherever VMs run under TCG: QEMU's security policy
// treats TCG as no security boundary.
const TCGWarning = "TCG is not a security boundary (QEMU's policy): run untrusted guests only with KVM"

// SandboxArgs is the -sandbox value: seccomp with no obsolete system
// calls, no privilege changes, no new processes (nothing QEMU does here
// needs one: TAP without scripts, migration through passed descriptors)
// and no scheduler or resource changes.
const SandboxArgs = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// ProbeSandbox reports whether the QEMU at binary accepts SandboxArgs (it
// is built with seccomp): QEMU parses -sandbox before -version exits.
func ProbeSandbox(ctx context.Context, binary string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "-sandbox", SandboxArgs, "-version").CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s -sandbox: %w: %s", binary, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Config configures the driver. The zero value plus a RelayCommand is usable.
type Config struct {
	// Binary is the QEMU executable, looked up in PATH when it has no
	// slash. Default "qemu-system-x86_64".
	Binary string
	// Accel is "auto" (default), "kvm" or "tcg". "auto" means KVM only when
	// KVMUsable is true; the caller decides that with a real boot probe.
	Accel string
	// KVMUsable is the caller's verdict that KVM works on this host.
	KVMUsable bool
	// VhostVsock is "auto" (default), "on" or "off".
	VhostVsock string
	// VhostVsockDevice is the device probed by VhostVsock "auto".
	// Default "/dev/vhost-vsock".
	VhostVsockDevice string
	// RelayCommand is the argv prefix of the agent relay, e.g.
	// [<minions-relay>, "agent-relay"] (package relay); the driver appends
	// "--serial <agent.sock> --listen <vsock.sock>". Required unless
	// vhost-vsock is used. Start waits until the relay accepts a
	// connection on its listen socket (it connects and closes without
	// writing), so the relay must shrug off such a probe.
	RelayCommand []string
	// ConsoleCommand is the argv prefix of the console logger, e.g.
	// [<minions-relay>, "console-log"]; the driver appends "--fifo
	// <RunDir/console.fifo> --log <Spec.ConsoleLog> --max-bytes
	// <ConsoleMaxBytes>" and starts it before QEMU, which writes the
	// console into the FIFO (see consolelog.Run). Empty: QEMU appends to
	// Spec.ConsoleLog itself, without a cap. Where the agent relay runs
	// (no vhost-vsock) this command is not started: the relay logs the
	// console itself (RelayCommand must then accept "--console-fd 3
	// --max-bytes N", as minions-relay agent-relay does; see doc.go).
	ConsoleCommand []string
	// ConsoleMaxBytes caps each VM's console log (the file and its
	// rotated ".1" together). Default consolelog.DefaultMaxBytes.
	ConsoleMaxBytes int64
	// Sandbox is "on" (default), "auto" or "off": QEMU's seccomp sandbox
	// (SandboxArgs), probed once per driver at the first start. With "on"
	// a QEMU without seccomp support cannot start VMs.
	Sandbox string
	// ProbeSandbox says whether the QEMU at binary has the seccomp sandbox
	// (nil: the package's ProbeSandbox, which runs QEMU). The daemon
	// passes one that keeps the verdict per host boot and binary, so a
	// CLI create does not pay for an extra QEMU exec.
	ProbeSandbox func(ctx context.Context, binary string) error
	// Jail confines QEMU and the relay of each VM (package jail): its own
	// uid (Jail.UIDBase + Spec.VsockCID, so specs need a CID), mount
	// namespace and cgroup. On by default; it needs root. Jail.Mode "off"
	// runs them as the caller, unconfined.
	Jail jail.Config
	// TSCkHz is the host TSC frequency in kHz, passed to TCG guests as
	// tsc_early_khz. 0 (default) reads it from /proc/cpuinfo at New.
	TSCkHz int
	// StartTimeout bounds how long Start and Restore wait for QMP and the
	// relay socket (in addition to the caller's context). Default 30 s.
	StartTimeout time.Duration
	// StopTimeout bounds how long Kill (and Shutdown's final kill) waits for
	// a killed process to vanish. Default 10 s.
	StopTimeout time.Duration
	// MemoryDir is a directory on a tmpfs where each booted VM keeps its
	// RAM in a file of its own (memory-backend-file, share=on), so a fork
	// copies that file instead of streaming the RAM through a migration
	// (see fork.go). "off" keeps RAM anonymous. Default "/dev/shm/minions";
	// a directory that is not on a tmpfs (RAM written back to a disk) is
	// treated as "off", with a warning, by New.
	MemoryDir string
	// MemoryOwner is the state dir of the installation MemoryDir is
	// for: New writes it into MemoryDir (memOwnerFile), so that once that
	// state dir is gone its memory dir is known to be garbage (see
	// SweepMemory). "": no record, and the dir is never swept as gone.
	MemoryOwner string
	// Log receives driver events (component=qemu). Default: discard.
	Log *slog.Logger
}

// MemoryDirOff is the Config.MemoryDir that keeps guest RAM anonymous.
const MemoryDirOff = "off"

func (c Config) withDefaults() Config {
	if c.Binary == "" {
		c.Binary = "qemu-system-x86_64"
	}
	if c.Accel == "" {
		c.Accel = AccelAuto
	}
	if c.VhostVsock == "" {
		c.VhostVsock = VsockAuto
	}
	if c.VhostVsockDevice == "" {
		c.VhostVsockDevice = "/dev/vhost-vsock"
	}
	if c.Sandbox == "" {
		c.Sandbox = SandboxOn
	}
	if c.ProbeSandbox == nil {
		c.ProbeSandbox = ProbeSandbox
	}
	c.Jail = c.Jail.WithDefaults()
	if c.StartTimeout == 0 {
		c.StartTimeout = 30 * time.Second
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = 10 * time.Second
	}
	if c.ConsoleMaxBytes == 0 {
		c.ConsoleMaxBytes = consolelog.DefaultMaxBytes
	}
	if c.MemoryDir == "" {
		c.MemoryDir = "/dev/shm/minions"
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

// Validate checks c after defaults are applied. It does not look at the
// host (New does).
func (c Config) Validate() error {
	c = c.withDefaults()
	switch c.Accel {
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return errs.New(errs.InvalidArgument, "qemu config: accel %q: want auto, kvm or tcg", c.Accel)
	}
	switch c.VhostVsock {
	case VsockAuto, VsockOn, VsockOff:
	default:
		return errs.New(errs.InvalidArgument, "qemu config: vhost vsock %q: want auto, on or off", c.VhostVsock)
	}
	if c.VhostVsock == VsockOff && len(c.RelayCommand) == 0 {
		return errs.New(errs.InvalidArgument, "qemu config: relay command is required without vhost-vsock")
	}
	switch c.Sandbox {
	case SandboxAuto, SandboxOn, SandboxOff:
	default:
		return errs.New(errs.InvalidArgument, "qemu config: sandbox %q: want auto, on or off", c.Sandbox)
	}
	if err := c.Jail.Validate(); err != nil {
		return fmt.Errorf("qemu config: %w", err)
	}
	if c.TSCkHz < 0 {
		return errs.New(errs.InvalidArgument, "qemu config: tsc khz %d is negative", c.TSCkHz)
	}
	if err := consolelog.ValidMax(c.ConsoleMaxBytes); err != nil {
		return fmt.Errorf("qemu config: %w", err)
	}
	if c.MemoryDir != MemoryDirOff && !filepath.IsAbs(c.MemoryDir) {
		return errs.New(errs.InvalidArgument, "qemu config: memory dir %q: want an absolute path or %q", c.MemoryDir, MemoryDirOff)
	}
	if c.StartTimeout < 0 || c.StopTimeout < 0 {
		return errs.New(errs.InvalidArgument, "qemu config: negative timeout")
	}
	return nil
}

// accel resolves "auto".
func (c Config) accel() string {
	if c.Accel == AccelAuto {
		if c.KVMUsable {
			return AccelKVM
		}
		return AccelTCG
	}
	return c.Accel
}

// HostTSCkHz reads the TSC frequency from the first "cpu MHz" line of
// /proc/cpuinfo.
func HostTSCkHz() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("read host tsc: %w", err)
	}
	defer f.Close()
	return parseCPUInfoKHz(f)
}

func parseCPUInfoKHz(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("read host tsc: bad cpu MHz %q", v)
		}
		return int(mhz * 1000), nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("read host tsc: %w", err)
	}
	return 0, errs.New(errs.NotFound, "read host tsc: no cpu MHz line in /proc/cpuinfo")
}
