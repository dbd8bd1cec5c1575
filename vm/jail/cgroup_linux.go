package jail

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/jail/jailexec"
)

// unifiedRoot is where a pure cgroup v2 host mounts its hierarchy.
const unifiedRoot = "/sys/fs/cgroup"

// controllers are the ones a VM's cgroup is limited by.
var controllers = jailexec.Controllers

// CgroupInfo describes the host's cgroups for doctor.
type CgroupInfo struct {
	// Version is "v2" on a unified host, "v1" on a legacy or hybrid host
	// (v1 controllers; a v2 hierarchy may be mounted without them).
	Version string `json:"version"`
	// Controllers are the ones the jail uses that are available.
	Controllers []string `json:"controllers"`
	// Detail is a human description.
	Detail string `json:"detail"`
}

// Missing returns the controllers the jail needs that info lacks.
func (i CgroupInfo) Missing() []string {
	var out []string
	for _, c := range controllers {
		if !slices.Contains(i.Controllers, c) {
			out = append(out, c)
		}
	}
	return out
}

// unified reports whether the host runs a pure cgroup v2 hierarchy.
func unified() (bool, error) {
	switch cgroups.Mode() {
	case cgroups.Unified:
		return true, nil
	case cgroups.Legacy, cgroups.Hybrid:
		return false, nil
	default:
		return false, errs.New(errs.FailedPrecondition, "no cgroup hierarchy mounted under /sys/fs/cgroup")
	}
}

// Cgroups inspects the host's cgroups.
func Cgroups() (CgroupInfo, error) {
	v2, err := unified()
	if err != nil {
		return CgroupInfo{}, err
	}
	if v2 {
		b, err := os.ReadFile(filepath.Join(unifiedRoot, "cgroup.controllers"))
		if err != nil {
			return CgroupInfo{}, fmt.Errorf("read cgroup v2 controllers: %w", err)
		}
		have := strings.Fields(string(b))
		info := CgroupInfo{Version: "v2", Detail: "unified hierarchy at " + unifiedRoot}
		for _, c := range controllers {
			if slices.Contains(have, c) {
				info.Controllers = append(info.Controllers, c)
			}
		}
		return info, nil
	}
	subs, err := v1Subsystems()
	if err != nil {
		return CgroupInfo{}, err
	}
	info := CgroupInfo{Version: "v1", Detail: "v1 controllers"}
	if cgroups.Mode() == cgroups.Hybrid {
		info.Detail += " (hybrid: the v2 hierarchy is mounted without them)"
	}
	for _, s := range subs {
		info.Controllers = append(info.Controllers, string(s.Name()))
	}
	slices.Sort(info.Controllers)
	return info, nil
}

// v1Subsystems returns the mounted v1 subsystems among controllers.
func v1Subsystems() ([]cgroup1.Subsystem, error) {
	all, err := cgroup1.Default()
	if err != nil {
		return nil, fmt.Errorf("cgroup v1 hierarchy: %w", err)
	}
	var out []cgroup1.Subsystem
	for _, s := range all {
		if slices.Contains(controllers, string(s.Name())) {
			out = append(out, s)
		}
	}
	return out, nil
}

// CreateCgroup creates (or updates) the cgroup name (relative to the
// hierarchy root, e.g. "minions/<vm id>") with limits l, on v1 in the cpu,
// memory and pids hierarchies, and raises its ancestors' CPU weight to the
// sum of their children's (see balanceAncestors). A host lacking one of
// these controllers is an errs.FailedPrecondition.
func CreateCgroup(name string, l Limits) error {
	v2, err := unified()
	if err != nil {
		return err
	}
	quota, period, mem, pids := l.CPUQuotaUs, l.CPUPeriodUs, l.MemoryBytes, l.PidsMax
	if v2 {
		info, err := Cgroups()
		if err != nil {
			return err
		}
		if m := info.Missing(); len(m) > 0 {
			return errs.New(errs.FailedPrecondition, "create cgroup %s: cgroup v2 controllers missing: %s", name, strings.Join(m, ", "))
		}
		cpu := &cgroup2.CPU{Max: cgroup2.NewCPUMax(&quota, &period)}
		if l.CPUShares > 0 {
			weight := v2Weight(l.CPUShares)
			cpu.Weight = &weight
		}
		_, err = cgroup2.NewManager(unifiedRoot, "/"+name, &cgroup2.Resources{
			CPU:    cpu,
			Memory: &cgroup2.Memory{Max: &mem},
			Pids:   &cgroup2.Pids{Max: pids},
		})
		if err != nil {
			return fmt.Errorf("create cgroup %s: %w", name, err)
		}
		return balanceAncestors(name)
	}
	subs, err := v1Subsystems()
	if err != nil {
		return err
	}
	if len(subs) < len(controllers) {
		return errs.New(errs.FailedPrecondition, "create cgroup %s: cgroup v1 controllers missing (have %d of cpu, memory, pids)", name, len(subs))
	}
	_, err = cgroup1.New(cgroup1.StaticPath("/"+name), &specs.LinuxResources{
		CPU:    v1CPU(quota, period, l.CPUShares),
		Memory: &specs.LinuxMemory{Limit: &mem},
		Pids:   &specs.LinuxPids{Limit: &pids},
	}, cgroup1.WithHierarchy(v1Subsystems))
	if err != nil {
		return fmt.Errorf("create cgroup %s: %w", name, err)
	}
	return balanceAncestors(name)
}

func v1CPU(quota int64, period, shares uint64) *specs.LinuxCPU {
	c := &specs.LinuxCPU{Quota: &quota, Period: &period}
	if shares > 0 {
		c.Shares = &shares
	}
	return c
}

// JoinCgroup moves process pid into cgroup name (every v1 hierarchy of
// the jail's controllers, or the v2 group).
func JoinCgroup(name string, pid int) error {
	v2, err := unified()
	if err != nil {
		return err
	}
	if v2 {
		m, err := cgroup2.Load("/" + name)
		if err == nil {
			err = m.AddProc(uint64(pid))
		}
		if err != nil {
			return fmt.Errorf("join cgroup %s: %w", name, err)
		}
		return nil
	}
	cg, err := cgroup1.Load(cgroup1.StaticPath("/"+name), cgroup1.WithHierarchy(v1Subsystems))
	if err == nil {
		err = cg.AddProc(uint64(pid))
	}
	if err != nil {
		return fmt.Errorf("join cgroup %s: %w", name, err)
	}
	return nil
}

// DeleteCgroup removes cgroup name once it is empty, waiting up to two
// seconds for exiting processes to leave it, and lowers its ancestors' CPU
// weight (see balanceAncestors). A missing cgroup is not an error
// (idempotent).
func DeleteCgroup(name string) error {
	v2, err := unified()
	if err != nil {
		return err
	}
	del := func() error {
		if v2 {
			if _, err := os.Stat(filepath.Join(unifiedRoot, name)); os.IsNotExist(err) {
				return nil
			}
			m, err := cgroup2.Load("/" + name)
			if err != nil {
				return err
			}
			return m.Delete()
		}
		cg, err := cgroup1.Load(cgroup1.StaticPath("/"+name), cgroup1.WithHierarchy(v1Subsystems))
		if errors.Is(err, cgroup1.ErrCgroupDeleted) {
			return nil
		}
		if err != nil {
			return err
		}
		return cg.Delete()
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := del()
		if err == nil {
			return balanceAncestors(name)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("delete cgroup %s: %w", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CgroupMemoryMax reads the memory limit of cgroup name in bytes (-1 for
// no limit).
func CgroupMemoryMax(name string) (int64, error) {
	v2, err := unified()
	if err != nil {
		return 0, err
	}
	file := filepath.Join(unifiedRoot, name, "memory.max")
	if !v2 {
		subs, err := v1Subsystems()
		if err != nil {
			return 0, err
		}
		i := slices.IndexFunc(subs, func(s cgroup1.Subsystem) bool { return s.Name() == cgroup1.Memory })
		p, ok := subs[max(i, 0)].(interface{ Path(string) string })
		if i < 0 || !ok {
			return 0, errs.New(errs.FailedPrecondition, "no cgroup v1 memory controller")
		}
		file = filepath.Join(p.Path("/"+name), "memory.limit_in_bytes")
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" {
		return -1, nil
	}
	var n int64
	if _, err := fmt.Sscan(s, &n); err != nil {
		return 0, fmt.Errorf("parse %s: %w", file, err)
	}
	return n, nil
}
