package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// Several hosts (issue 14): every VM operation goes to the engine of the
// VM's host (engineFor). A VM with no host (vms.host_id NULL) or on the
// host marked local runs on this host's engine (Deps.Engine); a VM on
// another host runs on that host's engine as the composition root hands
// it over (SetRemoteEngine: a nodeagent.Remote over the fabric).
//
// The control plane keeps its own row for every VM (name, owner, quota,
// routes, host): written before the remote create (state creating, with
// placeholders in the cluster-wide unique columns, see
// store.RemotePlaceholders), updated from each operation's result and from
// the node's exit reports, deleted after the node destroyed the VM. The
// node's engine keeps its own record on its own host.
//
// Faults: a host not heard from within HostsConfig.Unreachable is
// unreachable; its VMs show StatusUnknown with NoteHostUnreachable
// (computed when read, never stored) and operations on them fail at once
// with errs.Unavailable. Destroying such a VM removes it from every view
// and leaves a tombstone; HostHeard settles tombstones and creates that a
// crash of this process interrupted when the host is next heard from.

// StatusUnknown is the status of a VM whose host is unreachable, and
// NoteHostUnreachable its note.
const (
	StatusUnknown       = "unknown"
	NoteHostUnreachable = "host unreachable"
)

// remoteHosts is the registry of other hosts' engines.
type remoteHosts struct {
	mu       sync.Mutex
	engines  map[string]engine.Engine
	inflight map[string]bool      // VM IDs whose remote create runs in this process
	settling map[string]bool      // host IDs being settled now
	heard    map[string]time.Time // when each host was last heard from (HostHeard)
}

// SetRemoteEngine makes e the engine of host hostID (a host other than
// this one, e.g. a nodeagent.Remote); nil removes it. The service takes
// e's OnExit: the node's exit reports update the VMs' rows and feed the
// restart supervisor. The caller keeps owning e (closes it after
// removing it). Safe to call at any time.
func (s *Service) SetRemoteEngine(hostID string, e engine.Engine) {
	s.remotes.mu.Lock()
	if s.remotes.engines == nil {
		s.remotes.engines = map[string]engine.Engine{}
	}
	old := s.remotes.engines[hostID]
	if e == nil {
		delete(s.remotes.engines, hostID)
	} else {
		s.remotes.engines[hostID] = e
	}
	s.remotes.mu.Unlock()
	if old != nil && old != e {
		old.OnExit(nil)
	}
	if e != nil {
		e.OnExit(func(ctx context.Context, ex engine.Exit) { s.remoteExit(ctx, hostID, ex) })
	}
}

// remote returns host id's engine, if one is set.
func (s *Service) remote(id string) (engine.Engine, bool) {
	s.remotes.mu.Lock()
	defer s.remotes.mu.Unlock()
	e, ok := s.remotes.engines[id]
	return e, ok
}

func (s *Service) setInflight(id string, on bool) {
	s.remotes.mu.Lock()
	defer s.remotes.mu.Unlock()
	if s.remotes.inflight == nil {
		s.remotes.inflight = map[string]bool{}
	}
	if on {
		s.remotes.inflight[id] = true
	} else {
		delete(s.remotes.inflight, id)
	}
}

func (s *Service) isInflight(id string) bool {
	s.remotes.mu.Lock()
	defer s.remotes.mu.Unlock()
	return s.remotes.inflight[id]
}

// unreachable reports whether host h has not been heard from lately (the
// local host never is: its engine is this process's own).
func unreachable(h store.Host, cfg HostsConfig) bool {
	return !h.Local && h.State != store.HostJoining && cfg.Now().Sub(h.LastHeartbeat) > cfg.Unreachable
}

// engineFor is the engine that runs v: this host's for a VM with no host
// or on the local host, else the remote engine of v's host, wrapped so
// that each result updates the control plane's row. A host that is
// unreachable, or whose engine is not connected, is errs.Unavailable.
func (s *Service) engineFor(ctx context.Context, v store.VM) (engine.Engine, error) {
	if s.moving.has(v.ID) || s.moveRecorded(ctx, v.ID) {
		return nil, errs.New(errs.FailedPrecondition, "vm %s is being moved to another host; try again when the move ends", v.Name)
	}
	if v.HostID == "" {
		return s.Engine, nil
	}
	h, err := store.GetHostByID(ctx, s.DB, v.HostID)
	if err != nil {
		return nil, fmt.Errorf("host of vm %s: %w", v.Name, err)
	}
	if h.Local {
		return s.Engine, nil
	}
	if unreachable(h, s.hostsConfig()) {
		return nil, errs.New(errs.Unavailable, "vm %s: its host %s is unreachable (last heard %s ago)", v.Name, h.Name,
			s.hostsConfig().Now().Sub(h.LastHeartbeat).Round(time.Second))
	}
	e, ok := s.remote(h.ID)
	if !ok {
		return nil, errs.New(errs.Unavailable, "vm %s: its host %s is not connected to this control plane", v.Name, h.Name)
	}
	return &remoteVMs{Engine: e, s: s, host: h}, nil
}

// remoteVMs is another host's engine as the service uses it: each result
// is copied into the control plane's row (state, size, image, the node's
// address), Rename takes the cluster-wide name first, and Destroy deletes
// the row once the node destroyed the VM.
type remoteVMs struct {
	engine.Engine
	s    *Service
	host store.Host
}

func (r *remoteVMs) synced(ctx context.Context, inst engine.Instance, err error) (engine.Instance, error) {
	if err == nil {
		r.s.syncRow(ctx, r.host.ID, inst)
	}
	return inst, err
}

func (r *remoteVMs) Start(ctx context.Context, id string, p engine.Progress) (engine.Instance, error) {
	inst, err := r.Engine.Start(ctx, id, p)
	return r.synced(ctx, inst, err)
}

func (r *remoteVMs) Stop(ctx context.Context, id string) (engine.Instance, error) {
	inst, err := r.Engine.Stop(ctx, id)
	return r.synced(ctx, inst, err)
}

func (r *remoteVMs) Restart(ctx context.Context, id string, p engine.Progress) (engine.Instance, error) {
	inst, err := r.Engine.Restart(ctx, id, p)
	return r.synced(ctx, inst, err)
}

func (r *remoteVMs) Resize(ctx context.Context, id string, spec engine.ResizeSpec) (engine.Instance, error) {
	inst, err := r.Engine.Resize(ctx, id, spec)
	return r.synced(ctx, inst, err)
}

func (r *remoteVMs) RestoreSnapshot(ctx context.Context, id, snap string, p engine.Progress) (engine.Instance, error) {
	inst, err := r.Engine.RestoreSnapshot(ctx, id, snap, p)
	return r.synced(ctx, inst, err)
}

func (r *remoteVMs) Get(ctx context.Context, id string) (engine.Instance, error) {
	inst, err := r.Engine.Get(ctx, id)
	return r.synced(ctx, inst, err)
}

// Rename takes the new name in the control plane's row first (names are
// unique across hosts), then renames on the node; a failure there gives
// the old name back.
func (r *remoteVMs) Rename(ctx context.Context, id, name string) (engine.Instance, error) {
	v, err := store.GetVMByID(ctx, r.s.DB, id)
	if err != nil {
		return engine.Instance{}, err
	}
	old := v.Name
	v.Name = name
	if err := store.UpdateVM(ctx, r.s.DB, v); err != nil {
		return engine.Instance{}, fmt.Errorf("rename vm %s: %w", old, err)
	}
	inst, err := r.Engine.Rename(ctx, id, name)
	if err != nil {
		if cur, gerr := store.GetVMByID(context.WithoutCancel(ctx), r.s.DB, id); gerr == nil && cur.Name == name {
			cur.Name = old
			store.UpdateVM(context.WithoutCancel(ctx), r.s.DB, cur)
		}
		return inst, err
	}
	return r.synced(ctx, inst, nil)
}

// Destroy destroys the VM on its node, then forgets the row.
func (r *remoteVMs) Destroy(ctx context.Context, id string) error {
	if err := r.Engine.Destroy(ctx, id); err != nil {
		return err
	}
	return store.DeleteVM(context.WithoutCancel(ctx), r.s.DB, id)
}

// syncRow copies what node hostID reports of an instance into the
// control plane's row (the name stays the control plane's).
func (s *Service) syncRow(ctx context.Context, hostID string, inst engine.Instance) {
	ctx = context.WithoutCancel(ctx)
	err := s.DB.Tx(ctx, func(q store.Q) error {
		v, err := store.GetVMByID(ctx, q, inst.ID)
		if err != nil || v.HostID != hostID {
			return nil // destroyed meanwhile, or not that host's
		}
		v.State, v.CPUs, v.MemoryMiB, v.DiskGiB = inst.State, inst.CPUs, inst.MemoryMiB, inst.DiskGiB
		if inst.Image != "" {
			v.Image = inst.Image
		}
		v.NodeIP, v.NodeMAC, v.StartedAt, v.Note = inst.IP, inst.MAC, inst.StartedAt, inst.Note
		return store.UpdateVM(ctx, q, v)
	})
	if err != nil {
		s.log.Warn("record remote vm", "vm_id", inst.ID, "host_id", hostID, "err", err)
	}
}

// remoteExit is a VM of host hostID found down by its node: its row says
// stopped, and the supervisor hears of it as of a local exit.
func (s *Service) remoteExit(ctx context.Context, hostID string, e engine.Exit) {
	v, err := store.GetVMByID(ctx, s.DB, e.ID)
	if err != nil || v.HostID != hostID {
		return // not a VM this control plane knows on that host
	}
	if v.State != vm.Stopped {
		v.State = vm.Stopped
		if err := store.UpdateVM(ctx, s.DB, v); err != nil {
			s.log.Warn("record remote exit", "vm_id", e.ID, "err", err)
		}
	}
	e.Name, e.Owner = v.Name, v.OwnerID // the control plane's, not what the node says
	s.wentDown(ctx, e)
}

// createRemote makes spec on host h through e (makeRemote).
func (s *Service) createRemote(ctx context.Context, spec engine.CreateSpec, h store.Host, e engine.Engine, progress Progress) (engine.Instance, error) {
	disk := spec.DiskGiB
	if disk == 0 {
		disk = max(spec.DefaultDiskGiB, 1)
	}
	image := spec.Image
	if spec.CopyFrom != nil {
		if src, err := store.GetVMByID(ctx, s.DB, spec.CopyFrom.ID); err == nil {
			image = src.Image
		}
	}
	row := store.VM{ID: spec.ID, Name: spec.Name, OwnerID: spec.Owner, Image: image, CPUs: spec.CPUs, MemoryMiB: spec.MemoryMiB,
		DiskGiB: disk, State: vm.Creating, Port: 80, HostID: h.ID, CreatedAt: time.Now().UTC()}
	progress.Say("place")
	return s.makeRemote(ctx, "create vm "+spec.Name, row, e, func() (engine.Instance, error) { return e.Create(ctx, spec, progress) })
}

// makeRemote makes VM row (state creating) on its host, row.HostID,
// through that host's engine e: the control plane's row first (the name
// taken cluster-wide, the owner's quota checked in the same transaction,
// the node's columns placeholders), then run (the node's create or
// fork), then the row from its result. A failure deletes the row; when
// the node's outcome is unknown it is also asked to destroy the VM, and a
// node that cannot be asked gets a tombstone (HostHeard settles it). what
// names the operation in errors.
func (s *Service) makeRemote(ctx context.Context, what string, row store.VM, e engine.Engine, run func() (engine.Instance, error)) (engine.Instance, error) {
	err := s.DB.Tx(ctx, func(q store.Q) error {
		if err := s.checkQuota(ctx, q, row.OwnerID, row.CPUs, row.MemoryMiB, row.DiskGiB); err != nil {
			return err
		}
		if err := store.RemotePlaceholders(ctx, q, &row); err != nil {
			return err
		}
		return store.InsertVM(ctx, q, row)
	})
	if err != nil {
		return engine.Instance{}, fmt.Errorf("%s: %w", what, err)
	}
	s.setInflight(row.ID, true)
	defer s.setInflight(row.ID, false)
	inst, err := run()
	if err != nil {
		s.undoRemoteCreate(ctx, row, e, err)
		return engine.Instance{}, err
	}
	s.syncRow(ctx, row.HostID, inst)
	return inst, nil
}

// undoRemoteCreate rolls back a failed remote create of row. The node's
// engine undoes its own failures; only when the outcome is unknown (the
// node stopped answering, the caller gave up) is it asked to destroy the
// VM, and a node that cannot be asked gets a tombstone.
func (s *Service) undoRemoteCreate(ctx context.Context, row store.VM, e engine.Engine, cause error) {
	ctx = context.WithoutCancel(ctx)
	known := errs.ClassOf(cause) != nil && errs.ClassOf(cause) != errs.Unavailable
	if errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		known = false
	}
	bury := false
	if !known {
		dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		if err := e.Destroy(dctx, row.ID); err != nil {
			s.log.Warn("undo remote create: destroy on the node", "vm_id", row.ID, "host_id", row.HostID, "err", err)
			bury = true
		}
		cancel()
	}
	err := s.DB.Tx(ctx, func(q store.Q) error {
		if bury {
			if err := store.InsertTombstone(ctx, q, store.Tombstone{VMID: row.ID, HostID: row.HostID, Name: row.Name, CreatedAt: time.Now()}); err != nil {
				return err
			}
		}
		return store.DeleteVM(ctx, q, row.ID)
	})
	if err != nil {
		s.log.Warn("undo remote create", "vm_id", row.ID, "err", err)
	}
}

// bury removes v (on an unreachable host) from every view and leaves a
// tombstone: its node destroys it when it is next heard from.
func (s *Service) bury(ctx context.Context, v store.VM) error {
	err := s.DB.Tx(ctx, func(q store.Q) error {
		if err := store.InsertTombstone(ctx, q, store.Tombstone{VMID: v.ID, HostID: v.HostID, Name: v.Name, CreatedAt: time.Now()}); err != nil {
			return err
		}
		return store.DeleteVM(ctx, q, v.ID)
	})
	if err != nil {
		return fmt.Errorf("destroy vm %s: %w", v.Name, err)
	}
	s.log.Info("vm destroyed while its host is away: tombstone left", "vm_id", v.ID, "vm", v.Name, "host_id", v.HostID)
	return nil
}

// HostHeard tells the service that host id was just heard from (the
// daemon calls it on each heartbeat). When there is something to settle
// for it (tombstones, creates a crash interrupted) or it comes back after
// being away (or for the first time since this process started), its
// records are settled in the background (SettleHost). Cheap when there is
// nothing to do.
func (s *Service) HostHeard(ctx context.Context, id string) {
	if _, ok := s.remote(id); !ok {
		return
	}
	now := time.Now()
	s.remotes.mu.Lock()
	if s.remotes.heard == nil {
		s.remotes.heard, s.remotes.settling = map[string]time.Time{}, map[string]bool{}
	}
	last, seen := s.remotes.heard[id]
	s.remotes.heard[id] = now
	full := !seen || now.Sub(last) > s.hostsConfig().Unreachable
	if s.remotes.settling[id] {
		if full {
			s.remotes.heard[id] = last // settle fully next time
		}
		s.remotes.mu.Unlock()
		return
	}
	s.remotes.settling[id] = true
	s.remotes.mu.Unlock()
	go func() {
		defer func() {
			s.remotes.mu.Lock()
			delete(s.remotes.settling, id)
			s.remotes.mu.Unlock()
		}()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := s.SettleHost(sctx, id, full); err != nil {
			s.log.Warn("settle host", "host_id", id, "err", err)
		}
	}()
}

// SettleHost brings the control plane's records of host id's VMs in line
// with its node: tombstoned VMs are destroyed there (and the tombstones
// dropped); a create left in state creating by a crash of this process is
// adopted if the node made the VM, rolled back if it did not (one still
// under way on the node is left for the next time); with full, every
// other row takes the node's state, and a VM found stopped that was
// recorded running is reported to the supervisor as an exit (one missed
// while the host or this process was away).
func (s *Service) SettleHost(ctx context.Context, id string, full bool) error {
	e, ok := s.remote(id)
	if !ok {
		return errs.New(errs.Unavailable, "host %s is not connected", id)
	}
	if err := s.SettleMoves(ctx); err != nil { // moves a crash interrupted (move.go)
		s.log.Warn("settle moves", "err", err)
	}
	ts, err := store.ListTombstones(ctx, s.DB, id)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if err := e.Destroy(ctx, t.VMID); err != nil {
			s.log.Warn("destroy a tombstoned vm", "vm_id", t.VMID, "host_id", id, "err", err)
			continue
		}
		if err := store.DeleteTombstone(ctx, s.DB, t.VMID); err != nil {
			return err
		}
		s.log.Info("destroyed a vm destroyed while its host was away", "vm_id", t.VMID, "vm", t.Name, "host_id", id)
	}
	rows, err := store.ListHostVMs(ctx, s.DB, id)
	if err != nil {
		return err
	}
	for _, v := range rows {
		if s.isInflight(v.ID) || (!full && v.State != vm.Creating) {
			continue
		}
		inst, err := e.Get(ctx, v.ID)
		switch {
		case errs.ClassOf(err) == errs.NotFound && v.State == vm.Creating:
			// The node never made it (or rolled it back): so do we.
			if err := store.DeleteVM(ctx, s.DB, v.ID); err != nil {
				return err
			}
			s.record(ctx, HostActor, v, EventDestroy, "create interrupted by a control plane restart: rolled back")
			s.log.Info("interrupted create rolled back", "vm_id", v.ID, "vm", v.Name, "host_id", id)
		case errs.ClassOf(err) == errs.NotFound:
			s.log.Warn("vm missing on its host", "vm_id", v.ID, "vm", v.Name, "host_id", id)
		case err != nil:
			s.log.Warn("settle vm", "vm_id", v.ID, "host_id", id, "err", err)
		case inst.State == vm.Creating:
			// Still under way on the node: next time.
		default:
			s.syncRow(ctx, id, inst)
			if v.State == vm.Running && inst.State == vm.Stopped {
				// It went down while we did not hear (its exit report
				// was lost): the supervisor decides as for any crash.
				s.wentDown(ctx, engine.Exit{ID: v.ID, Name: v.Name, Owner: v.OwnerID, Reason: engine.ExitCrashed,
					Detail: "found stopped when its host was heard from again", StartedAt: v.StartedAt, At: time.Now()})
			}
			if v.State == vm.Creating {
				if err := store.PutRestart(ctx, s.DB, store.Restart{VMID: v.ID, Policy: store.RestartAlways}); err != nil {
					s.log.Warn("record restart policy", "vm_id", v.ID, "err", err)
				}
				s.record(ctx, HostActor, v, "create", "create interrupted by a control plane restart: adopted")
				s.log.Info("interrupted create adopted", "vm_id", v.ID, "vm", v.Name, "host_id", id)
			}
		}
	}
	return nil
}

// hostIndex is the host registry as views need it.
type hostIndex struct {
	hosts map[string]store.Host
	local string // the local host's name ("" when none is registered)
	cfg   HostsConfig
}

func (s *Service) hostIndex(ctx context.Context) hostIndex {
	hx := hostIndex{hosts: map[string]store.Host{}, cfg: s.hostsConfig()}
	hs, err := store.ListHosts(ctx, s.DB)
	if err != nil {
		return hx
	}
	for _, h := range hs {
		hx.hosts[h.ID] = h
		if h.Local {
			hx.local = h.Name
		}
	}
	return hx
}

// placed fills out's host and, for a VM on an unreachable host, shows
// StatusUnknown with NoteHostUnreachable (never stored).
func (hx hostIndex) placed(out VM) VM {
	if out.hostID == "" {
		out.Host = hx.local
		return out
	}
	h, ok := hx.hosts[out.hostID]
	if !ok {
		return out
	}
	out.Host = h.Name
	if unreachable(h, hx.cfg) {
		out.Status, out.Note, out.PID = StatusUnknown, NoteHostUnreachable, 0
	}
	return out
}

// RemoteHostIDs lists the hosts other than this one that have joined (a
// node key recorded), for the composition root to connect their engines.
func (s *Service) RemoteHostIDs(ctx context.Context) ([]string, error) {
	hs, err := store.ListHosts(ctx, s.DB)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, h := range hs {
		if !h.Local && h.NKey != "" {
			out = append(out, h.ID)
		}
	}
	return out, nil
}

// DialWeb connects to port of VM id for the web proxy, which has already
// decided who may reach the VM (routes, sessions): a VM of this host at
// its address on the bridge; a VM on another host through its node's
// tunnel (PortDialer: the node dials the VM's address on its bridge), or,
// without one, through its guest agent to port on the guest's own
// loopback (a server there must listen on all addresses or 127.0.0.1). Closing the
// connection releases the agent connection. errs.NotFound for no such VM,
// errs.Unavailable for an unreachable host or nothing listening.
func (s *Service) DialWeb(ctx context.Context, id string, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, errs.New(errs.InvalidArgument, "port %d: want 1-65535", port)
	}
	v, err := store.GetVMByID(ctx, s.DB, id)
	if err != nil {
		return nil, err
	}
	eng, err := s.engineFor(ctx, v)
	if err != nil {
		return nil, err
	}
	// A remote host's engine reaches its VMs' ports itself, over its
	// node's tunnel (nodeagent.Remote.DialPort): the node dials the VM's
	// address on its own bridge. Without a tunnel, the guest agent.
	target := engine.Engine(eng)
	if r, ok := eng.(*remoteVMs); ok {
		target = r.Engine
	}
	if pd, ok := target.(PortDialer); ok {
		c, err := pd.DialPort(ctx, v.ID, port)
		if !errors.Is(err, errors.ErrUnsupported) {
			return c, err
		}
	}
	if eng == s.Engine {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", net.JoinHostPort(v.IP, strconv.Itoa(port)))
	}
	cl, err := eng.Agent(ctx, v.ID)
	if err != nil {
		return nil, err
	}
	conn, err := cl.SSH().Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		cl.Close()
		return nil, errs.New(errs.Unavailable, "port %d of vm %s: %v", port, v.Name, err)
	}
	return &forwardConn{Conn: conn, g: &GuestSession{cl: cl}}, nil
}
