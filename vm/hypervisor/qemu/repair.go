package qemu

import (
	"context"
	"os"
	"path/filepath"
	"slices"

	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/procfs"
)

var _ hypervisor.Repairer = (*Driver)(nil)

// Repair restarts the agent relay of a running VM if it died (killed by
// hand, or OOM): QEMU's agent.sock is still there and the guest link
// redoes its handshake with the new relay. A dead console logger is
// restarted too (see repairConsoleLogger).
func (d *Driver) Repair(ctx context.Context, h *hypervisor.Handle) (*hypervisor.Handle, bool, error) {
	if h == nil || !d.Alive(h) || len(h.Helpers) == 0 {
		return h, false, nil
	}
	h, logged, err := d.repairConsoleLogger(h)
	if err != nil {
		return h, logged, err
	}
	dead := false
	for _, p := range h.Helpers {
		if p.Name == "agent-relay" && !procfs.Alive(p.PID, p.StartTime) {
			dead = true
		}
	}
	if !dead {
		return h, logged, nil
	}
	path := func(name string) string { return filepath.Join(h.RunDir, name) }
	console, err := d.relayConsole(h)
	if err != nil {
		return h, logged, err
	}
	relay, err := d.startRelay(h.RunDir, h.UID, h.Cgroup, console)
	closeAll(console)
	if err != nil {
		return h, logged, err
	}
	if err := waitSocket(ctx, relay, path(vsockSock), path(relayLog)); err != nil {
		d.stopChild(context.Background(), relay)
		return h, logged, err
	}
	nh := *h
	nh.Helpers = []hypervisor.Process{{Name: "agent-relay", PID: relay.PID, StartTime: relay.Start}}
	for _, p := range h.Helpers {
		if p.Name != "agent-relay" {
			nh.Helpers = append(nh.Helpers, p)
		}
	}
	d.cfg.Log.Info("agent relay restarted", "pid", relay.PID, "run_dir", h.RunDir)
	return &nh, true, nil
}

// relayConsole opens the console descriptors for a restarted relay of h
// when that relay logged the console (no console-log helper of its own:
// VMs started before relays logged consoles keep their logger).
func (d *Driver) relayConsole(h *hypervisor.Handle) ([]*os.File, error) {
	if slices.ContainsFunc(h.Helpers, func(p hypervisor.Process) bool { return p.Name == consoleHelper }) {
		return nil, nil
	}
	m, err := readMachine(h.RunDir)
	if err != nil || !relayLogsConsole(m) {
		return nil, err
	}
	return openConsoleFiles(m)
}
