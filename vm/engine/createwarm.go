package engine

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
	"golang.org/x/crypto/ssh"
)

// TemplateKeeper builds and lists a host's warm templates: the local
// engine, and a node's over the fabric (nodeagent.Remote), so an admin
// can warm and list the templates of any host of a cluster.
type TemplateKeeper interface {
	// WarmTemplate builds the template of image ref and a shape now,
	// unless it exists (see Local.WarmTemplate).
	WarmTemplate(ctx context.Context, ref string, cpus, memMiB, diskGiB int, progress Progress) (Template, error)
	// Templates lists the complete templates.
	Templates(ctx context.Context) ([]Template, error)
}

// Warmer is implemented by engines that keep warm templates (Local): the
// control plane type-asserts its Engine to it.
type Warmer interface {
	TemplateKeeper
	// WarmLater does WarmTemplate in the background; errors are logged.
	WarmLater(ctx context.Context, ref string, cpus, memMiB, diskGiB int)
	// DropTemplates removes the templates of image ref ("" for all).
	DropTemplates(ctx context.Context, ref string) error
}

var _ Warmer = (*Local)(nil)

// createResult is what createSteps tells Create beyond the record.
type createResult struct {
	boot     string
	warnings []string
}

// tryWarm restores a new instance from the template of its image version
// and shape, when there is one and spec does not ask for a cold boot. It
// reports whether the instance runs. A failed restore is undone, the
// template is dropped (it may be corrupt) and a warning recorded in res:
// the caller then boots cold.
func (l *Local) tryWarm(ctx context.Context, o *op, row *store.VM, img Image, spec CreateSpec, progress Progress, res *createResult) bool {
	if spec.Cold || l.templater() == nil {
		return false
	}
	t, ok := l.findTemplate(img, row.CPUs, row.MemoryMiB, row.DiskGiB)
	if !ok {
		return false
	}
	v, err := l.warmCreate(ctx, o, *row, t, spec, progress)
	if err == nil {
		*row = v
		res.boot = BootWarm
		return true
	}
	if ctx.Err() != nil {
		return false
	}
	msg := fmt.Sprintf("restore from warm template %s failed, booted from the image instead (template dropped): %v", t.Key, err)
	l.log.Warn("warm create failed, booting cold", "vm_id", row.ID, "template", t.Key, "err", err)
	res.warnings = append(res.warnings, msg)
	progress.Say("warning: " + msg)
	if err := l.DropTemplate(context.WithoutCancel(ctx), t.Key); err != nil {
		l.log.Warn("drop template", "template", t.Key, "err", err)
	}
	row.Handle = ""
	return false
}

// warmCreate is the warm path of create: a disk child of the template's
// disk, the clone started from the template, its agent awaited and the
// guest re-identified (hostname, machine-id, MAC, IP, keys, entropy,
// clock). On failure it removes what it made.
func (l *Local) warmCreate(ctx context.Context, o *op, row store.VM, t Template, spec CreateSpec, progress Progress) (store.VM, error) {
	tr := l.templater()
	var u undo
	defer u.run()
	begin := time.Now()
	progress.Say("disk")
	o.step(ctx, "disk", nil)
	if err := os.MkdirAll(l.vmDir(row.ID), 0o700); err != nil {
		return row, err
	}
	dp := l.diskPath(row.ID)
	// A copy of the template's disk (an overlay of the image holding what
	// the template's boot wrote), not an overlay of it: the instance's disk
	// is then an overlay of its image like a cold one's, which moves,
	// copies and backups ship as one file and a target rebases onto its own
	// copy of the image. An overlay of the template's disk would lose that
	// layer on the target. The template's boot writes little (1.1 MiB for
	// the minimal image).
	if err := l.Disks.Clone(ctx, t.Disk, dp); err != nil {
		return row, fmt.Errorf("disk: %w", err)
	}
	u.push(func() { os.Remove(dp) })
	disked := time.Now()
	ip, run, err := l.attach(ctx, o, &u, row, progress, "restore (warm template)")
	if err != nil {
		return row, err
	}
	start := time.Now()
	hs := hypervisor.Spec{ID: row.ID, Name: row.Name, CPUs: row.CPUs, MemoryMiB: row.MemoryMiB,
		Kernel: t.Kernel, Initramfs: t.Initramfs, Cmdline: t.Cmdline,
		Disks:  []hypervisor.Disk{{Path: dp, Format: "qcow2"}},
		Net:    &hypervisor.NetIface{TAP: tapName(row.ID), MAC: row.MAC},
		RunDir: run, ConsoleLog: l.consolePath(row.ID), VsockCID: row.CID}
	console := consolelog.NewFollowerFromEnd(hs.ConsoleLog) // this run's output only
	h, err := tr.StartClone(ctx, hs, l.templateDir(t.Key))
	if err != nil {
		console.Close()
		return row, fmt.Errorf("restore: %w", err)
	}
	u.push(func() { l.Driver.Kill(context.Background(), h) })
	restored := time.Now()
	progress.Say("agent")
	// As for a fork: the re-identification right after is the ping (a
	// round trip less to a guest whose every first round trip is slow
	// under TCG), and the phases go to the timing line.
	acfg := l.agentConfig("", nil)
	var phases agentPhases
	acfg.Observe = phases.observe
	acfg.NoPing = true
	row, cl, err := l.recordAndWaitReady(ctx, o, row, h, console, acfg)
	if err != nil {
		return row, err
	}
	defer cl.Close()
	ready := time.Now()
	pctx, cancel := context.WithTimeout(ctx, l.cfg.ReadyTimeout)
	defer cancel()
	progress.Say("reidentify")
	o.step(ctx, "reidentify", nil)
	key, err := l.reidentifyGuest(pctx, cl, row, ip, spec.AuthorizedKeys)
	if err != nil {
		return row, err
	}
	reidentified := time.Now()
	row.AgentKey = key
	row.State = vm.Running
	row.StartedAt = time.Now().UTC()
	if err := store.UpdateVM(ctx, l.DB, row); err != nil {
		return row, err
	}
	// Each step's time (the benchmarks tabulate them): the disk child,
	// the TAP, QEMU's restore, the agent's handshake, re-identification
	// and the store's update.
	l.log.Info("vm ready (warm)", "vm_id", row.ID, "vm", row.Name, "pid", h.PID, "template", t.Key, "ready_ms", time.Since(start).Milliseconds(),
		"disk_ms", disked.Sub(begin).Milliseconds(), "network_ms", start.Sub(disked).Milliseconds(),
		"restore_ms", restored.Sub(start).Milliseconds(), "agent_ms", ready.Sub(restored).Milliseconds(),
		"reidentify_ms", reidentified.Sub(ready).Milliseconds(), "record_ms", time.Since(reidentified).Milliseconds(),
		slog.Group("", phases.attrs()...))
	u = nil
	l.agents.adopt(row.ID, h, cl) // the first `ssh vm@host` dials nothing
	return row, nil
}

// warmLater builds the template of img and a shape in the background, if
// templates are on and none exists or is being built (after a cold create
// of that shape, or when an image is built or becomes the default).
func (l *Local) warmLater(img Image, cpus, memMiB, diskGiB int) {
	if l.templater() == nil || !l.cfg.BackgroundWarm {
		return
	}
	if _, ok := l.findTemplate(img, cpus, memMiB, diskGiB); ok {
		return
	}
	key := templateKey(img, cpus, memMiB, diskGiB)
	if _, busy := l.warming.LoadOrStore(key, true); busy {
		return
	}
	l.bg.Add(1)
	go func() {
		defer l.bg.Done()
		defer l.warming.Delete(key)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		if _, err := l.WarmTemplate(ctx, img.Ref, cpus, memMiB, diskGiB, nil); err != nil {
			l.log.Warn("background template build failed", "image", img.Ref, "cpus", cpus, "memory_mib", memMiB, "err", err)
		}
	}()
}

// WarmLater builds, in the background, the template of image ref for a
// shape (see WarmTemplate) unless it exists or templates are off. Errors
// are logged.
func (l *Local) WarmLater(ctx context.Context, ref string, cpus, memMiB, diskGiB int) {
	if l.templater() == nil {
		return
	}
	img, err := l.Images.Resolve(ctx, ref)
	if err != nil {
		l.log.Warn("warm template", "image", ref, "err", err)
		return
	}
	if diskGiB == 0 {
		diskGiB = max(1, int((img.SizeBytes+1<<30-1)>>30))
	}
	l.warmLater(img, cpus, memMiB, diskGiB)
}

// WaitBackground waits for the background template builds started so far.
func (l *Local) WaitBackground() { l.bg.Wait() }

// reidentifyGuest gives a restored guest (a warm clone, a fork) row's
// identity: hostname, a new machine-id, row's MAC and ip on this host's
// subnet, keys, a reseeded RNG and the clock; it returns the agent's new
// host key in authorized_keys form.
func (l *Local) reidentifyGuest(ctx context.Context, cl *vsockcli.Client, row store.VM, ip netip.Addr, keys []string) (string, error) {
	id := vsockcli.Identity{Hostname: row.Name, MachineID: vsockcli.NewMachineID(), MAC: row.MAC,
		IP: netip.PrefixFrom(ip, l.cfg.Subnet.Bits()), Gateway: l.cfg.Gateway, AuthorizedKeys: keys}
	if dns, err := netip.ParseAddr(l.cfg.DNS); err == nil {
		id.DNS = dns
	}
	start := time.Now()
	r, err := cl.Reidentify(ctx, id)
	if err != nil {
		return "", fmt.Errorf("re-identify guest: %w", err)
	}
	took := time.Since(start)
	lag := clockLag(took, r.Steps, r.StepMillis, r.ClockFromReceipt)
	l.log.Info("guest re-identified", "vm_id", row.ID, "duration_ms", took.Milliseconds(), "clock_lag_bound_ms", lag.Milliseconds(),
		"flush_pending", r.FlushPending, "steps", stepProfile(r.Steps, r.StepMillis), "network_ms", r.NetworkMillis,
		slog.Group("", guestCPUAttrs(r.CPU)...))
	if r.AgentHostKey == nil {
		return "", errs.New(errs.Unavailable, "re-identify guest: no new agent host key")
	}
	// Reidentify set the clock to the host's time when it was sent; under
	// load the guest may have taken seconds to get there. When it may
	// have, a second, small call brings it within a round trip.
	if lag > maxClockLag {
		now := time.Now().UnixNano()
		if err := cl.Configure(ctx, proto.Configure{TimeUnixNano: &now}); err != nil {
			return "", fmt.Errorf("set guest clock: %w", err)
		}
	}
	return string(bytes.TrimSpace(ssh.MarshalAuthorizedKey(r.AgentHostKey))), nil
}

// maxClockLag is how far behind the host's a re-identified guest's clock
// may be left without a second call to set it (the checks allow 2 s).
const maxClockLag = 250 * time.Millisecond

// clockLag bounds how far behind the host's the guest's clock is after a
// re-identification that took took (host wall time, from before the
// request was made to its reply) with the guest's steps and their times
// ms: the guest set its clock to the request's send time in its "set
// clock" step, so it lags by the request's transit to the guest plus its
// steps up to and including that one (the first two for agents that do
// not name it). The transit is at most took less the guest's steps (both
// transits together). An agent that set its clock to the send time plus
// its own time since the receipt (fromReceipt) lags by the transit only.
// Without step times the bound is took.
func clockLag(took time.Duration, steps []string, ms []int64, fromReceipt bool) time.Duration {
	if len(ms) < 2 {
		return took
	}
	if fromReceipt {
		var guest int64
		for _, m := range ms {
			guest += m
		}
		return max(0, took-time.Duration(guest)*time.Millisecond)
	}
	upTo := 1
	if i := slices.Index(steps, "set clock"); i >= 0 {
		upTo = i
	}
	var guest, before int64
	for i, m := range ms {
		guest += m
		if i <= upTo {
			before += m
		}
	}
	transit := took - time.Duration(guest)*time.Millisecond
	return max(0, transit) + time.Duration(before)*time.Millisecond
}

// stepProfile renders the guest's re-identification steps with their
// times: "reseed rng=1ms, set clock=0ms, ...".
func stepProfile(steps []string, ms []int64) string {
	var b strings.Builder
	for i, s := range steps {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(s)
		if i < len(ms) {
			fmt.Fprintf(&b, "=%dms", ms[i])
		}
	}
	return b.String()
}

// guestCPUAttrs are the log attributes of a re-identification's CPU split
// (none from an agent that does not report it).
func guestCPUAttrs(c *proto.ReidentifyCPU) []any {
	if c == nil {
		return nil
	}
	return []any{"guest_wall_ms", c.WallMillis, "guest_agent_cpu_ms", c.AgentMillis,
		"guest_busy_ms", c.BusyMillis, "guest_iowait_ms", c.IOWaitMillis}
}
