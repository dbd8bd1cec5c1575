package config

import (
	"fmt"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/scheduler"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/vm/consolelog"
)

// defaultMinFreeSpaceMiB is the free space on the state filesystem below
// which `minions doctor` warns (config min_free_space_mib).
const defaultMinFreeSpaceMiB = 2048

// QuotaConfig is the [default_quota] table: the quota each new non-admin
// user gets (sign-up over SSH, `minions user add`). 0 means unlimited; a
// config without the table gives service.DefaultSignupQuota.
type QuotaConfig struct {
	MaxVMs       int `toml:"max_vms"`
	MaxCPUs      int `toml:"max_cpus"`
	MaxMemoryMiB int `toml:"max_memory_mib"`
	MaxDiskGiB   int `toml:"max_disk_gib"` // VM disks plus snapshot files
}

// Resources are the limits Open passes on to the service and the driver.
type Resources struct {
	DefaultQuota       service.Quota
	MemoryOvercommit   float64
	ConsoleLogMaxBytes int64
	// Placement is how create places VMs on the cluster's hosts
	// (placement, cpu_overcommit; the memory ratio is MemoryOvercommit).
	Placement scheduler.Config
	// DrainMode is how `host drain` moves VMs (drain_mode: memory, the
	// default, cold or live).
	DrainMode string
}

func (c *Config) resourceDefaults() {
	if c.DefaultQuota == nil {
		q := service.DefaultSignupQuota
		c.DefaultQuota = &QuotaConfig{MaxVMs: q.MaxVMs, MaxCPUs: q.MaxCPUs, MaxMemoryMiB: q.MaxMemoryMiB, MaxDiskGiB: q.MaxDiskGiB}
	}
	if c.MemoryOvercommit == 0 {
		c.MemoryOvercommit = service.DefaultMemoryOvercommit
	}
	if c.ConsoleLogMaxBytes == 0 {
		c.ConsoleLogMaxBytes = consolelog.DefaultMaxBytes
	}
	if c.DrainMode == "" {
		c.DrainMode = service.DefaultDrainMode
	}
}

func (c *Config) validateResources() error {
	if q := c.DefaultQuota; q != nil {
		if err := c.Resources().DefaultQuota.Validate(); err != nil {
			return fmt.Errorf("default_quota: %w", err)
		}
	}
	if c.MemoryOvercommit < 0 || c.MemoryOvercommit > 100 {
		return errs.New(errs.InvalidArgument, "memory_overcommit %g: want a ratio above 0 (1 = no overcommit)", c.MemoryOvercommit)
	}
	if err := c.Resources().Placement.Validate(); err != nil {
		return fmt.Errorf("placement: %w", err)
	}
	switch c.DrainMode {
	case "", "cold", "memory", "live":
	default:
		return errs.New(errs.InvalidArgument, "drain_mode %q: want memory, cold or live", c.DrainMode)
	}
	if c.ConsoleLogMaxBytes != 0 {
		if err := consolelog.ValidMax(c.ConsoleLogMaxBytes); err != nil {
			return fmt.Errorf("console_log_max_bytes: %w", err)
		}
	}
	return nil
}

// Resources returns the resource settings (call Defaults first).
func (c Config) Resources() Resources {
	r := Resources{MemoryOvercommit: c.MemoryOvercommit, ConsoleLogMaxBytes: c.ConsoleLogMaxBytes, DrainMode: c.DrainMode,
		Placement: scheduler.Config{Policy: scheduler.Policy(c.Placement), CPUOvercommit: c.CPUOvercommit, MemoryOvercommit: c.MemoryOvercommit}}
	if q := c.DefaultQuota; q != nil {
		r.DefaultQuota = service.Quota{MaxVMs: q.MaxVMs, MaxCPUs: q.MaxCPUs, MaxMemoryMiB: q.MaxMemoryMiB, MaxDiskGiB: q.MaxDiskGiB}
	}
	return r
}
