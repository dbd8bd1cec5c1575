package guestagent

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/crypto/ssh"
)

// Version is the agent version reported by ping and status; set at link
// time with -X.
var Version = "dev"

// Mount is a mounted filesystem.
type Mount struct {
	Source string // block device, e.g. /dev/vda
	Target string // mount point
	FSType string
}

// Config configures a Server. The zero value of every optional field means
// its default.
type Config struct {
	// AuthorizedKey is the only client key accepted (required).
	AuthorizedKey ssh.PublicKey
	// HostKeyPath is where the agent's ed25519 host key is kept; it is
	// created on first use (default /etc/minions/agent_host_key).
	HostKeyPath string
	// Root is prepended to the files the agent reads and writes for
	// configure and status (/etc/hostname, /etc/machine-id,
	// /root/.ssh/authorized_keys, /etc/ssh/ssh_host_*) and to /etc/passwd
	// (default "/").
	Root string
	// FreezeTimeout thaws frozen filesystems automatically (default 30 s).
	FreezeTimeout time.Duration
	// Mounts lists the filesystems fsfreeze acts on (default: every
	// writable block-device filesystem in /proc/self/mounts).
	Mounts func() ([]Mount, error)
	// GrowMount is the mount point growfs grows (default "/").
	GrowMount string
	// SetHostname sets the kernel hostname (default sethostname(2)).
	SetHostname func(name string) error
	// SetTime sets the system clock (default clock_settime(2)).
	SetTime func(t time.Time) error
	// ReseedRNG mixes entropy into the kernel RNG and SetNetwork gives
	// eth0 a MAC and address, for reidentify (defaults: the kernel's, and
	// only inside a Minions guest; see guard.go).
	ReseedRNG  func(entropy []byte) error
	SetNetwork func(mac net.HardwareAddr, ip netip.Prefix, gw netip.Addr) error
	// Power powers the machine off or reboots it after a shutdown request
	// (required: PowerOff for PID 1, SystemPower under an init system).
	Power func(reboot bool) error
	// Reaper, when set, is the PID 1 orphan reaper through which child
	// processes are waited for. Nil means os.Process.Wait.
	Reaper *Reaper
	// Log receives the agent's log (default: discard).
	Log *slog.Logger
}

// Validate reports whether c is usable.
func (c *Config) Validate() error {
	if c.AuthorizedKey == nil {
		return errors.New("agent config: no authorized key")
	}
	if c.Power == nil {
		return errors.New("agent config: no power function")
	}
	if c.FreezeTimeout < 0 {
		return fmt.Errorf("agent config: negative freeze timeout %v", c.FreezeTimeout)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.HostKeyPath == "" {
		c.HostKeyPath = "/etc/minions/agent_host_key"
	}
	if c.Root == "" {
		c.Root = "/"
	}
	if c.FreezeTimeout == 0 {
		c.FreezeTimeout = 30 * time.Second
	}
	if c.Mounts == nil {
		c.Mounts = func() ([]Mount, error) { return WritableBlockMounts("/proc/self/mounts") }
	}
	if c.GrowMount == "" {
		c.GrowMount = "/"
	}
	if c.SetHostname == nil {
		c.SetHostname = sethostname
	}
	if c.SetTime == nil {
		c.SetTime = settime
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c *Config) path(p string) string {
	if c.Root == "/" {
		return p
	}
	return c.Root + p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
