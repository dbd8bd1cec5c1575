package jail

import (
	"cmp"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
)

// Modes accepted by Config.Mode.
const (
	ModeOn  = "on"  // default: every VM process is jailed
	ModeOff = "off" // processes run as the caller (root), unconfined
)

// Defaults.
const (
	DefaultUIDBase           = 2_000_000_000
	DefaultCgroupParent      = "minions"
	DefaultMemoryOverheadMiB = 256
	DefaultPidsMax           = 1024
)

// Config configures the jail. The zero value plus a Command is usable.
type Config struct {
	// Mode is "on" (default) or "off".
	Mode string
	// Command is the argv prefix of the jail launcher, e.g.
	// [<minions executable>, "jail-exec"]; the caller appends the JSON
	// plan. The launcher must call Main. Required when Mode is on.
	Command []string
	// UIDBase is the first per-VM uid: a VM with index i runs as uid and
	// gid UIDBase+i. No /etc/passwd entries are needed. Default
	// 2000000000, far above the ranges distributions and subuid maps use.
	UIDBase uint32
	// CgroupParent is the cgroup (relative to the hierarchy's root) under
	// which each VM gets <CgroupParent>/<vm id>. Default "minions".
	CgroupParent string
	// Installation, when set, names this installation's own group under
	// CgroupParent: each VM gets <CgroupParent>/<Installation>/<vm id>
	// (see InstallationCgroup). Several installations of one machine (a
	// control plane and its nodes in network namespaces, test daemons)
	// then never share a VM's cgroup, and SweepCgroups can tell this
	// installation's groups from the others'. One path element; "" keeps
	// the flat layout (no sweep).
	Installation string
	// MemoryOverheadMiB is added to the guest memory for the cgroup's
	// memory limit: QEMU's own allocations (device emulation, the TCG
	// translation cache), the relay and page cache. Default 256.
	MemoryOverheadMiB int
	// PidsMax bounds the tasks (processes and threads) of one VM.
	// Default 1024.
	PidsMax int
	// Hide are directories covered by an empty tmpfs in each VM's mount
	// namespace (the state and run directories); the VM's own files in
	// them are bound back. Absolute paths.
	Hide []string
	// Log receives the jail's rare operational notes (default
	// slog.Default()).
	Log *slog.Logger
}

// WithDefaults returns c with unset fields set to their defaults.
func (c Config) WithDefaults() Config {
	c.Mode = cmp.Or(c.Mode, ModeOn)
	c.UIDBase = cmp.Or(c.UIDBase, DefaultUIDBase)
	c.CgroupParent = cmp.Or(c.CgroupParent, DefaultCgroupParent)
	c.MemoryOverheadMiB = cmp.Or(c.MemoryOverheadMiB, DefaultMemoryOverheadMiB)
	c.PidsMax = cmp.Or(c.PidsMax, DefaultPidsMax)
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return c
}

// On reports whether processes are jailed.
func (c Config) On() bool { return c.WithDefaults().Mode == ModeOn }

// Validate checks c after defaults are applied. It does not look at the
// host.
func (c Config) Validate() error {
	c = c.WithDefaults()
	bad := func(format string, args ...any) error {
		return errs.New(errs.InvalidArgument, "jail config: "+format, args...)
	}
	switch c.Mode {
	case ModeOn, ModeOff:
	default:
		return bad("mode %q: want on or off", c.Mode)
	}
	if c.Mode == ModeOn && len(c.Command) == 0 {
		return bad("a launcher command is required (or mode off)")
	}
	if c.UIDBase < 1000 {
		return bad("uid base %d would reuse system uids", c.UIDBase)
	}
	if c.MemoryOverheadMiB < 0 || c.PidsMax < 0 {
		return bad("negative memory overhead or pids max")
	}
	if c.CgroupParent != filepath.Clean(c.CgroupParent) || strings.HasPrefix(c.CgroupParent, "/") || strings.HasPrefix(c.CgroupParent, "..") {
		return bad("cgroup parent %q: want a clean relative path", c.CgroupParent)
	}
	if c.Installation != "" && (strings.ContainsAny(c.Installation, "/\x00") || c.Installation == "." || c.Installation == "..") {
		return bad("installation %q: want one path element", c.Installation)
	}
	for _, h := range c.Hide {
		if !filepath.IsAbs(h) || h != filepath.Clean(h) || h == "/" {
			return bad("hide %q: want a clean absolute path other than /", h)
		}
	}
	return nil
}

// UID returns the uid (and gid) of the VM with index i (its vsock CID).
// An index of 0 is refused: it would give two VMs without an index the
// same uid.
func (c Config) UID(i uint32) (int, error) {
	c = c.WithDefaults()
	if i == 0 {
		return 0, errs.New(errs.InvalidArgument, "jail: vm has no index (vsock cid) to derive its uid from")
	}
	u := uint64(c.UIDBase) + uint64(i)
	if u >= math.MaxUint32 {
		return 0, errs.New(errs.InvalidArgument, "jail: uid base %d + index %d overflows", c.UIDBase, i)
	}
	return int(u), nil
}

// Cgroup returns the cgroup path (relative to the hierarchy root) of VM id.
func (c Config) Cgroup(id string) (string, error) {
	if id == "" || strings.ContainsAny(id, "/\x00") || id == "." || id == ".." {
		return "", errs.New(errs.InvalidArgument, "jail: vm id %q cannot name a cgroup", id)
	}
	if g := c.InstallationCgroup(); g != "" {
		return g + "/" + id, nil
	}
	return c.WithDefaults().CgroupParent + "/" + id, nil
}

// InstallationCgroup is the group holding this installation's VM
// cgroups (<CgroupParent>/<Installation>), or "" when Installation is
// unset (the VMs' cgroups are children of the shared CgroupParent).
func (c Config) InstallationCgroup() string {
	if c.Installation == "" {
		return ""
	}
	return c.WithDefaults().CgroupParent + "/" + c.Installation
}

// Limits are the resource limits of one VM's cgroup.
type Limits struct {
	MemoryBytes int64  // memory.max / memory.limit_in_bytes
	CPUQuotaUs  int64  // CPU time per CPUPeriodUs (cpu.max / cfs_quota_us)
	CPUPeriodUs uint64 // the CFS period
	PidsMax     int64  // pids.max
	// CPUShares is the VM's CPU weight against its sibling VMs in cgroup
	// v1 units (cpu.shares; v2's cpu.weight is this * 100 / 1024):
	// SharesPerCPU per vCPU, so a busy VM weighs what its busy vCPU
	// threads would weigh outside any cgroup.
	CPUShares uint64
}

// SharesPerCPU is the cgroup v1 cpu.shares of one busy thread (a nice 0
// task; v2 weight 100).
const SharesPerCPU = 1024

// cpuPeriodUs is the CFS period used for the CPU quota (the kernel's
// default).
const cpuPeriodUs = 100_000

// Limits returns the cgroup limits of a VM with cpus vCPUs and memMiB of
// guest memory: memory is guest memory plus MemoryOverheadMiB, CPU time is
// cpus full CPUs, tasks are PidsMax, CPU weight is SharesPerCPU per vCPU.
func (c Config) Limits(cpus, memMiB int) (Limits, error) {
	c = c.WithDefaults()
	if cpus < 1 || memMiB < 1 {
		return Limits{}, errs.New(errs.InvalidArgument, "jail: limits for %d cpus and %d MiB", cpus, memMiB)
	}
	return Limits{
		MemoryBytes: int64(memMiB+c.MemoryOverheadMiB) << 20,
		CPUQuotaUs:  int64(cpus) * cpuPeriodUs,
		CPUPeriodUs: cpuPeriodUs,
		PidsMax:     int64(c.PidsMax),
		CPUShares:   uint64(cpus) * SharesPerCPU,
	}, nil
}

// String renders l for logs and doctor.
func (l Limits) String() string {
	return fmt.Sprintf("memory %d MiB, cpu %d/%d us, cpu shares %d, pids %d", l.MemoryBytes>>20, l.CPUQuotaUs, l.CPUPeriodUs, l.CPUShares, l.PidsMax)
}
