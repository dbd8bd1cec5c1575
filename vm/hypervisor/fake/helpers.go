package fake

import (
	"context"
	"fmt"
	"os/exec"
	"slices"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
	"golang.org/x/sys/unix"
)

// OpRepair names Repair in Calls: one call per Repair, whatever it did.
const OpRepair Op = "repair"

var _ hypervisor.Repairer = (*Driver)(nil)

// spawnHelper starts a helper process named name: a real host process
// (sleep), so that its liveness is what procfs sees, as the engine sees
// a real driver's agent relay. It is reaped when it exits. Call with d.mu
// held.
func (d *Driver) spawnHelper(name string) (hypervisor.Process, error) {
	cmd := exec.Command("sleep", "3600")
	if err := cmd.Start(); err != nil {
		return hypervisor.Process{}, fmt.Errorf("start helper %s: %w", name, err)
	}
	start, err := procfs.StartTime(cmd.Process.Pid)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		return hypervisor.Process{}, fmt.Errorf("start helper %s: %w", name, err)
	}
	go cmd.Wait()
	p := hypervisor.Process{Name: name, PID: cmd.Process.Pid, StartTime: start}
	d.helpers = append(d.helpers, p)
	return p, nil
}

// spawnHelpers starts Config.Helpers for a new VM; on failure it stops
// those it started. Call with d.mu held.
func (d *Driver) spawnHelpers() ([]hypervisor.Process, error) {
	var out []hypervisor.Process
	for _, name := range d.cfg.Helpers {
		p, err := d.spawnHelper(name)
		if err != nil {
			stopHelpers(out)
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// stopHelpers kills ps (those still alive with their start time).
func stopHelpers(ps []hypervisor.Process) {
	for _, p := range ps {
		procfs.Signal(p.PID, p.StartTime, unix.SIGKILL)
	}
}

// Repair restarts the dead helpers of a live VM, as the QEMU driver
// restarts its agent relay: it returns the handle with the new helpers
// and true, or h and false when every helper lives (or the VM is gone).
// Every call is recorded as OpRepair.
func (d *Driver) Repair(ctx context.Context, h *hypervisor.Handle) (*hypervisor.Handle, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.record(OpRepair, pidOf(h), nil)
	if d.lookup(h) == nil {
		return h, false, nil
	}
	nh := *h
	nh.Helpers = slices.Clone(h.Helpers)
	changed := false
	for i, p := range nh.Helpers {
		if procfs.Alive(p.PID, p.StartTime) {
			continue
		}
		np, err := d.spawnHelper(p.Name)
		if err != nil {
			return h, false, err
		}
		nh.Helpers[i], changed = np, true
	}
	if !changed {
		return h, false, nil
	}
	return &nh, true, nil
}

// Close kills every helper process the fake started that still runs.
// Tests that set Config.Helpers call it when they end.
func (d *Driver) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	stopHelpers(d.helpers)
	d.helpers = nil
}
