package tuitest

import (
	"context"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// The host registry of the fake: SetHosts fills it (Hosts is a seeded
// cluster), HostList returns it in order, HostCordon and HostUncordon
// change a host's state as the service does. Every host call is recorded
// in Calls ("HostList", "HostCordon node1"), reads included, so a test can
// prove that no host call was made; Fail("HostList", err) injects errors.

// Hosts returns a seeded cluster relative to Epoch (the fake's clock is
// Epoch + 1h): the control plane's own host, a ready node, a cordoned
// node, an unreachable one and one still joining.
func Hosts() []service.Host { return HostsAt(Epoch) }

// HostsAt is Hosts with heartbeats relative to base + 1h (the clock of
// NewSeededAt(base)).
func HostsAt(base time.Time) []service.Host {
	now := base.Add(time.Hour)
	return []service.Host{
		{ID: "0000000000c1", Name: "cp", Local: true, Address: "local", Subnet: "10.77.0.0/24", State: "ready", Version: "0.9.0",
			CPUs: 8, MemoryMiB: 16384, DiskMiB: 512000, MemoryFreeMiB: 9216, DiskFreeMiB: 409600,
			VMs: 3, UsedCPUs: 7, UsedMemoryMiB: 5632, UsedDiskGiB: 55, LastHeartbeat: now.Add(-2 * time.Second)},
		{ID: "0000000000c2", Name: "node1", Address: "192.0.2.11", Subnet: "10.88.1.0/24", State: "ready", Version: "0.9.0",
			CPUs: 16, MemoryMiB: 65536, DiskMiB: 1024000, MemoryFreeMiB: 61440, DiskFreeMiB: 1000000,
			VMs: 1, UsedCPUs: 2, UsedMemoryMiB: 2048, UsedDiskGiB: 20, LastHeartbeat: now.Add(-4 * time.Second)},
		{ID: "0000000000c3", Name: "node2", Address: "192.0.2.12", Subnet: "10.88.2.0/24", State: "cordoned", Cordoned: true, Version: "0.8.2",
			CPUs: 4, MemoryMiB: 8192, DiskMiB: 204800, MemoryFreeMiB: 8000, DiskFreeMiB: 200000,
			LastHeartbeat: now.Add(-1 * time.Second)},
		{ID: "0000000000c4", Name: "node3", Address: "192.0.2.13", Subnet: "10.88.3.0/24", State: "unreachable", Version: "0.9.0",
			CPUs: 4, MemoryMiB: 8192, DiskMiB: 204800, VMs: 2, UsedCPUs: 2, UsedMemoryMiB: 1024, UsedDiskGiB: 10,
			LastHeartbeat: now.Add(-3 * time.Minute)},
		{ID: "0000000000c5", Name: "node4", State: "joining"},
	}
}

// SetHosts replaces the fake's hosts.
func (f *Fake) SetHosts(hs []service.Host) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hosts = append([]service.Host(nil), hs...)
}

// Host returns the host called name.
func (f *Fake) Host(name string) (service.Host, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i := f.hostIndex(name)
	if i < 0 {
		return service.Host{}, false
	}
	return f.hosts[i], true
}

func (f *Fake) hostIndex(name string) int {
	for i, h := range f.hosts {
		if h.Name == name {
			return i
		}
	}
	return -1
}

// hostCall records method and returns its injected failure or the index
// of host name (NotFound when there is none; -1 for name "").
func (f *Fake) hostCall(method, name string) (int, error) {
	if name == "" {
		f.calls = append(f.calls, method)
	} else {
		f.calls = append(f.calls, method+" "+name)
	}
	if err := f.fails[method]; err != nil {
		return -1, err
	}
	if name == "" {
		return -1, nil
	}
	i := f.hostIndex(name)
	if i < 0 {
		return -1, errs.New(errs.NotFound, "host %q", name)
	}
	return i, nil
}

// HostList implements service.Backend.
func (f *Fake) HostList(ctx context.Context) ([]service.Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.hostCall("HostList", ""); err != nil {
		return nil, err
	}
	return append([]service.Host{}, f.hosts...), nil
}

// HostStatus implements service.Backend.
func (f *Fake) HostStatus(ctx context.Context, name string) (service.Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.hostCall("HostStatus", name)
	if err != nil {
		return service.Host{}, err
	}
	return f.hosts[i], nil
}

// HostCordon implements service.Backend: a joining host is refused as
// the service refuses it.
func (f *Fake) HostCordon(ctx context.Context, name string) (service.Host, error) {
	return f.setCordon("HostCordon", name, true)
}

// HostUncordon implements service.Backend.
func (f *Fake) HostUncordon(ctx context.Context, name string) (service.Host, error) {
	return f.setCordon("HostUncordon", name, false)
}

func (f *Fake) setCordon(method, name string, on bool) (service.Host, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	i, err := f.hostCall(method, name)
	if err != nil {
		return service.Host{}, err
	}
	h := &f.hosts[i]
	if h.State == "joining" {
		return service.Host{}, errs.New(errs.FailedPrecondition, "host %s has not joined yet", name)
	}
	h.Cordoned = on
	if h.State != "unreachable" {
		h.State = "ready"
		if on {
			h.State = "cordoned"
		}
	}
	return *h, nil
}
