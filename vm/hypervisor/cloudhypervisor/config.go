package cloudhypervisor

import (
	"cmp"
	"io"
	"log/slog"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// Config configures the driver. The zero value is usable.
type Config struct {
	// Binary is the Cloud Hypervisor executable, looked up in PATH when it
	// has no slash. Default "cloud-hypervisor".
	Binary string
	// MaxVCPUs is the vCPU hotplug ceiling given to every VM (max_vcpus);
	// Resize can grow a VM up to it. 0 (default) means the VM's own CPU
	// count rounded up to DefaultMaxVCPUs.
	MaxVCPUs int
	// MemoryHotplugMiB is the address space reserved for memory hotplug
	// (hotplug_size); Resize can grow memory by up to about this much.
	// Default DefaultMemoryHotplugMiB; -1 disables memory hotplug.
	MemoryHotplugMiB int
	// AgentPort is the guest vsock port the agent listens on. Default 1024.
	AgentPort uint32
	// RNGSource is the host entropy source for virtio-rng. Default
	// "/dev/urandom".
	RNGSource string
	// StartTimeout bounds how long Start and Restore wait for the API
	// socket to answer (in addition to the caller's context). Default 10 s.
	StartTimeout time.Duration
	// StopTimeout bounds how long a kill waits for the process to vanish.
	// Default 10 s.
	StopTimeout time.Duration
	// PollInterval is how often Shutdown and the start-up wait poll the
	// process and the API. Default 20 ms.
	PollInterval time.Duration
	// Log receives driver events (component=cloud-hypervisor). Default:
	// discard.
	Log *slog.Logger
}

// Defaults.
const (
	DefaultMaxVCPUs         = 8
	DefaultMemoryHotplugMiB = 4096
	DefaultAgentPort        = 1024
)

func (c Config) withDefaults() Config {
	c.Binary = cmp.Or(c.Binary, "cloud-hypervisor")
	c.MemoryHotplugMiB = cmp.Or(c.MemoryHotplugMiB, DefaultMemoryHotplugMiB)
	c.AgentPort = cmp.Or(c.AgentPort, DefaultAgentPort)
	c.RNGSource = cmp.Or(c.RNGSource, "/dev/urandom")
	c.StartTimeout = cmp.Or(c.StartTimeout, 10*time.Second)
	c.StopTimeout = cmp.Or(c.StopTimeout, 10*time.Second)
	c.PollInterval = cmp.Or(c.PollInterval, 20*time.Millisecond)
	if c.Log == nil {
		c.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c
}

// Validate reports a configuration error as errs.InvalidArgument.
func (c Config) Validate() error {
	switch {
	case c.MaxVCPUs < 0 || c.MaxVCPUs > 255:
		return errs.New(errs.InvalidArgument, "cloud-hypervisor config: max vcpus %d out of range 0..255", c.MaxVCPUs)
	case c.MemoryHotplugMiB < -1:
		return errs.New(errs.InvalidArgument, "cloud-hypervisor config: memory hotplug %d MiB: want -1, 0 or a size", c.MemoryHotplugMiB)
	case c.StartTimeout < 0 || c.StopTimeout < 0 || c.PollInterval < 0:
		return errs.New(errs.InvalidArgument, "cloud-hypervisor config: negative timeout")
	}
	return nil
}

func (c Config) maxVCPUs(boot int) int {
	if c.MaxVCPUs > 0 {
		return max(c.MaxVCPUs, boot)
	}
	return max(DefaultMaxVCPUs, boot)
}
