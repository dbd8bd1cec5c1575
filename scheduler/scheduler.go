// Package scheduler places VMs on hosts: a pure function of the hosts'
// capacity, what their VMs use and the request, with no I/O (the service
// loads the hosts and records the choice).
//
// A host fits when it is schedulable (ready, reachable, not cordoned) and
// has, after the VM, vCPUs used ≤ CPUs × CPUOvercommit, memory used ≤
// memory × MemoryOvercommit, and at least the VM's disk free. Among the
// hosts that fit, Spread picks the one left with the most free memory
// (share of its capacity), Binpack the one left with the least; ties go
// to the lower vCPU share, then the name. Request.Host pins the VM.
package scheduler

import (
	"fmt"
	"sort"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
)

// Policy is how to choose among the hosts that fit.
type Policy string

const (
	Spread  Policy = "spread"  // emptiest host first (the default)
	Binpack Policy = "binpack" // fullest host that fits first
)

// Host is what the scheduler knows of a host.
type Host struct {
	ID, Name string
	// Schedulable is false for a host that is joining, cordoned or
	// unreachable; Why says which (for the error).
	Schedulable bool
	Why         string

	CPUs        int   // vCPU capacity before overcommit (host threads)
	MemoryMiB   int64 // before overcommit
	DiskFreeMiB int64

	UsedCPUs      int   // given to the VMs on it
	UsedMemoryMiB int64 // of its VMs that are not stopped
}

// Request is one VM to place.
type Request struct {
	CPUs      int
	MemoryMiB int64
	DiskMiB   int64
	// Host pins the VM to this host (name or ID); "" lets the scheduler
	// choose.
	Host string
}

// Config tunes placement. Zero fields take the defaults noted.
type Config struct {
	Policy           Policy  // default Spread
	CPUOvercommit    float64 // vCPUs per host thread; default 4
	MemoryOvercommit float64 // default 1.5 (service.DefaultMemoryOvercommit)
}

func (c *Config) setDefaults() {
	if c.Policy == "" {
		c.Policy = Spread
	}
	if c.CPUOvercommit == 0 {
		c.CPUOvercommit = 4
	}
	if c.MemoryOvercommit == 0 {
		c.MemoryOvercommit = 1.5
	}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	c.setDefaults()
	if c.Policy != Spread && c.Policy != Binpack {
		return errs.New(errs.InvalidArgument, "scheduling policy %q: want spread or binpack", c.Policy)
	}
	if c.CPUOvercommit < 0 || c.CPUOvercommit > 100 || c.MemoryOvercommit < 0 || c.MemoryOvercommit > 100 {
		return errs.New(errs.InvalidArgument, "overcommit ratios must be between 0 and 100")
	}
	return nil
}

// Schedule returns the index in hosts of the host for req. Errors:
// errs.InvalidArgument for a bad request or config, errs.NotFound for a
// pin naming no host, errs.FailedPrecondition for a pin on a host that
// takes no VMs now, errs.ResourceExhausted when no host has room (saying
// why for each). It does not change hosts.
func Schedule(hosts []Host, req Request, cfg Config) (int, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return -1, err
	}
	if req.CPUs <= 0 || req.MemoryMiB <= 0 || req.DiskMiB < 0 {
		return -1, errs.New(errs.InvalidArgument, "a vm needs at least 1 vCPU and some memory")
	}
	if req.Host != "" {
		for i := range hosts {
			h := &hosts[i]
			if h.Name != req.Host && h.ID != req.Host {
				continue
			}
			if !h.Schedulable {
				return -1, errs.New(errs.FailedPrecondition, "host %s takes no vms now (%s)", h.Name, h.Why)
			}
			if why := room(h, req, cfg); why != "" {
				return -1, errs.New(errs.ResourceExhausted, "host %s has no room for %s: %s", h.Name, describe(req), why)
			}
			return i, nil
		}
		return -1, errs.New(errs.NotFound, "no host named %q", req.Host)
	}
	best, bestMem, bestCPU := -1, 0.0, 0.0
	for i := range hosts {
		h := &hosts[i]
		if !h.Schedulable || room(h, req, cfg) != "" {
			continue
		}
		// Free shares left after placing the VM.
		mem := 1 - float64(h.UsedMemoryMiB+req.MemoryMiB)/(float64(h.MemoryMiB)*cfg.MemoryOvercommit)
		cpu := 1 - float64(h.UsedCPUs+req.CPUs)/(float64(h.CPUs)*cfg.CPUOvercommit)
		if best < 0 || better(cfg.Policy, mem, cpu, h.Name, bestMem, bestCPU, hosts[best].Name) {
			best, bestMem, bestCPU = i, mem, cpu
		}
	}
	if best < 0 {
		return -1, noRoom(hosts, req, cfg)
	}
	return best, nil
}

func better(p Policy, mem, cpu float64, name string, bMem, bCPU float64, bName string) bool {
	if p == Binpack {
		mem, cpu, bMem, bCPU = -mem, -cpu, -bMem, -bCPU
	}
	switch {
	case mem != bMem:
		return mem > bMem
	case cpu != bCPU:
		return cpu > bCPU
	}
	return name < bName
}

// room says why h cannot take req ("" if it can).
func room(h *Host, req Request, cfg Config) string {
	var why []string
	if cpuCap := int(float64(h.CPUs) * cfg.CPUOvercommit); h.UsedCPUs+req.CPUs > cpuCap {
		why = append(why, fmt.Sprintf("%d of %d vCPUs free (cpu_overcommit %g)", max(cpuCap-h.UsedCPUs, 0), cpuCap, cfg.CPUOvercommit))
	}
	if memCap := int64(float64(h.MemoryMiB) * cfg.MemoryOvercommit); h.UsedMemoryMiB+req.MemoryMiB > memCap {
		why = append(why, fmt.Sprintf("not enough host memory: %d MiB of %d MiB free (memory_overcommit %g)", max(memCap-h.UsedMemoryMiB, 0), memCap, cfg.MemoryOvercommit))
	}
	if req.DiskMiB > h.DiskFreeMiB {
		why = append(why, fmt.Sprintf("%d MiB disk free", h.DiskFreeMiB))
	}
	return strings.Join(why, ", ")
}

func describe(req Request) string {
	return fmt.Sprintf("%d vCPU, %d MiB memory, %d MiB disk", req.CPUs, req.MemoryMiB, req.DiskMiB)
}

func noRoom(hosts []Host, req Request, cfg Config) error {
	if len(hosts) == 0 {
		return errs.New(errs.ResourceExhausted, "no hosts to place a vm on")
	}
	reasons := make([]string, 0, len(hosts))
	for i := range hosts {
		h := &hosts[i]
		why := h.Why
		if h.Schedulable {
			why = room(h, req, cfg)
		}
		reasons = append(reasons, h.Name+": "+why)
	}
	sort.Strings(reasons)
	if len(reasons) > 10 {
		reasons = append(reasons[:10], fmt.Sprintf("and %d more", len(reasons)-10))
	}
	return errs.New(errs.ResourceExhausted, "no host has room for %s (%s)", describe(req), strings.Join(reasons, "; "))
}
