package service

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// The host registry (issue 14): admins add hosts (a one-time join token),
// nodes exchange the token for their fabric credential (JoinHost) and
// report capacity by heartbeat (RecordHeartbeat); a host not heard from
// within HostsConfig.Unreachable shows "unreachable". Every method but
// JoinHost, NodeKey and RecordHeartbeat (called by the node side, which
// authenticates otherwise) is for admins only.

// HostsConfig is the cluster part of the configuration, set by the
// composition root with SetHosts.
type HostsConfig struct {
	// JoinURL is the control plane's API as a new host reaches it
	// (http(s)://advertise:port); "" makes `host add` fail with
	// errs.FailedPrecondition.
	JoinURL string
	// NATSURLs are the fabric addresses nodes connect to.
	NATSURLs []string
	// NATSCA is the PEM certificate of the CA nodes verify the fabric's
	// TLS with ("" : the fabric's own configuration, e.g. an external
	// cluster with a public CA).
	NATSCA string
	// JoinTTL is how long a join token is valid; default 1 h.
	JoinTTL time.Duration
	// Unreachable is how long without a heartbeat until a host shows
	// "unreachable"; default 10 s.
	Unreachable time.Duration
	// Now is the clock; default time.Now (tests set it).
	Now func() time.Time
	// ClusterSubnet is the range joined hosts' /24 subnets are carved
	// from; default DefaultClusterSubnet. It must not overlap the control
	// plane's own subnet (Config.Subnet): a join is refused until it does
	// not.
	ClusterSubnet netip.Prefix
	// JoinProblem, when set, is why a node on another host could not
	// use JoinURL or NATSURLs (listeners on loopback only): HostAdd
	// refuses with it (errs.FailedPrecondition).
	JoinProblem string
}

// HostUnreachable is the state shown for a host not heard from lately.
const HostUnreachable = "unreachable"

type hostsState struct {
	mu  sync.RWMutex
	cfg HostsConfig

	// The local host's heartbeats (see localBeat); beatMu guards them.
	beatMu    sync.Mutex
	localID   string    // the local host's ID, once EnsureLocalHost ran
	localRec  Heartbeat // the last local report written to the store
	localAt   time.Time // when it was written; zero: none yet
	localSeen time.Time // the last local report received
}

// localBeatRewrite is how often the local host's heartbeat is written to
// the store when its report has not changed (see localBeat).
const localBeatRewrite = time.Minute

// localBeat reports whether the report hb of host id, received at now,
// is the local host's (local), and whether it needs no write (skip): it
// is the local host's, it matches the last one written (free memory and
// disk within localBeatSlack) and that write is younger than
// localBeatRewrite. Every commit changes the store's stamp, so each
// of the in-process node's heartbeats (every 2 s) made reconcile, the
// supervisor and the proxy's route cache read the store again: about a
// fifth of an idle daemon's CPU. The local host is never unreachable (its
// engine is this process's own) and the host views take its last report's
// time from memory (localSeenAt), so only its free memory and disk in
// the store can lag, by less than localBeatSlack.
func (st *hostsState) localBeat(id string, hb Heartbeat, now time.Time) (skip, local bool) {
	st.beatMu.Lock()
	defer st.beatMu.Unlock()
	if id == "" || id != st.localID {
		return false, false
	}
	st.localSeen = now
	last := st.localRec
	return !st.localAt.IsZero() && now.Sub(st.localAt) < localBeatRewrite && now.After(st.localAt) &&
		hb.CPUs == last.CPUs && hb.MemoryMiB == last.MemoryMiB && hb.DiskMiB == last.DiskMiB &&
		hb.Version == last.Version && (hb.Address == "" || hb.Address == last.Address) &&
		near(hb.MemoryFreeMiB, last.MemoryFreeMiB, hb.MemoryMiB) && near(hb.DiskFreeMiB, last.DiskFreeMiB, hb.DiskMiB), true
}

// near reports whether a and b differ by less than localBeatSlack of
// total (at least 64 MiB).
func near(a, b, total int64) bool {
	d := a - b
	if d < 0 {
		d = -d
	}
	return d < max(total/localBeatSlack, 64)
}

// localBeatSlack: the local host's free memory and disk are written again
// when they moved by 1/localBeatSlack of the total.
const localBeatSlack = 64

// wroteLocal notes the local host's report hb as written at at.
func (st *hostsState) wroteLocal(hb Heartbeat, at time.Time) {
	st.beatMu.Lock()
	defer st.beatMu.Unlock()
	st.localRec, st.localAt = hb, at
}

// localSeenAt is the time of the local host's last report received by
// this process (zero: none, or id is not the local host).
func (st *hostsState) localSeenAt(id string) time.Time {
	st.beatMu.Lock()
	defer st.beatMu.Unlock()
	if id == "" || id != st.localID {
		return time.Time{}
	}
	return st.localSeen
}

// SetHosts sets the cluster configuration. Safe to call at any time.
func (s *Service) SetHosts(cfg HostsConfig) {
	if cfg.JoinTTL <= 0 {
		cfg.JoinTTL = time.Hour
	}
	if cfg.Unreachable <= 0 {
		cfg.Unreachable = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s.hosts.mu.Lock()
	s.hosts.cfg = cfg
	s.hosts.mu.Unlock()
}

func (s *Service) hostsConfig() HostsConfig {
	s.hosts.mu.RLock()
	cfg := s.hosts.cfg
	s.hosts.mu.RUnlock()
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Unreachable <= 0 {
		cfg.Unreachable = 10 * time.Second
	}
	if cfg.JoinTTL <= 0 {
		cfg.JoinTTL = time.Hour
	}
	if !cfg.ClusterSubnet.IsValid() {
		cfg.ClusterSubnet = DefaultClusterSubnet
	}
	return cfg
}

// Host is the public view of a host.
type Host struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Local   bool   `json:"local"`
	Address string `json:"address"`
	// Subnet is the host's VM network: assigned at join from the cluster
	// range, the configured subnet for the control plane's own host, ""
	// while joining.
	Subnet   string `json:"subnet"`
	State    string `json:"state"`    // joining, ready, cordoned or unreachable
	Cordoned bool   `json:"cordoned"` // also while unreachable
	Version  string `json:"version"`

	CPUs          int   `json:"cpus"`
	MemoryMiB     int64 `json:"memory_mib"`
	DiskMiB       int64 `json:"disk_mib"`
	MemoryFreeMiB int64 `json:"memory_free_mib"`
	DiskFreeMiB   int64 `json:"disk_free_mib"`

	// What the VMs on the host have been given.
	VMs           int   `json:"vms"`
	UsedCPUs      int   `json:"used_cpus"`
	UsedMemoryMiB int64 `json:"used_memory_mib"`
	UsedDiskGiB   int64 `json:"used_disk_gib"`

	LastHeartbeat time.Time `json:"last_heartbeat"`
	CreatedAt     time.Time `json:"created_at"`

	// NKey is the public key the host's node connects to the fabric with
	// ("" until it joins): what an external NATS cluster must admit.
	NKey string `json:"nkey,omitempty"`
}

// HostInvite is what HostAdd returns: the token is shown once.
type HostInvite struct {
	Host      Host      `json:"host"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	// Command is what to run on the new host.
	Command string `json:"command"`
}

// JoinRequest is what a node sends to join: its one-time token and the
// public half of the NKey it made (its credential; the seed never leaves
// the node).
type JoinRequest struct {
	Token   string `json:"token"`
	NKey    string `json:"nkey"`
	Version string `json:"version,omitempty"`
	// Address is how the control plane reaches the node (the API fills
	// in the request's source address when empty).
	Address string `json:"address,omitempty"`
}

// JoinResult tells a joined node who it is and where the fabric is.
type JoinResult struct {
	HostID string   `json:"host_id"`
	Name   string   `json:"name"`
	NATS   []string `json:"nats"`
	CA     string   `json:"ca,omitempty"` // PEM: trust only this CA for NATS TLS
	// Subnet is the node's VM network (its bridge, gateway and VM
	// addresses), e.g. 10.88.3.0/24.
	Subnet string `json:"subnet"`
}

// Heartbeat is a node's report of its capacity.
type Heartbeat struct {
	CPUs          int
	MemoryMiB     int64
	DiskMiB       int64
	MemoryFreeMiB int64
	DiskFreeMiB   int64
	Version       string
	// Address is the node's address as it reaches the fabric (where the
	// control plane reaches it directly); "" keeps the stored one.
	Address string
}

// ValidNodeKey reports whether s could be an NKey user public key
// (the fabric checks it for real; this is input validation).
func validNodeKey(s string) bool {
	if len(s) != 56 || s[0] != 'U' {
		return false
	}
	for _, r := range s {
		if !('A' <= r && r <= 'Z' || '2' <= r && r <= '7') {
			return false
		}
	}
	return true
}

func (s *Service) hostView(ctx context.Context, q store.Q, h store.Host, cfg HostsConfig) (Host, error) {
	use, err := store.HostUsage(ctx, q, h.ID, h.Local)
	if err != nil {
		return Host{}, err
	}
	out := Host{ID: h.ID, Name: h.Name, Local: h.Local, Address: h.Address, Subnet: h.Subnet, State: h.State, Cordoned: h.State == store.HostCordoned,
		Version: h.Version, CPUs: h.CPUs, MemoryMiB: h.MemoryMiB, DiskMiB: h.DiskMiB, MemoryFreeMiB: h.MemoryFreeMiB,
		DiskFreeMiB: h.DiskFreeMiB, VMs: use.VMs, UsedCPUs: use.CPUs, UsedMemoryMiB: use.MemoryMiB, UsedDiskGiB: use.DiskGiB,
		LastHeartbeat: h.LastHeartbeat, CreatedAt: h.CreatedAt}
	if seen := s.hosts.localSeenAt(h.ID); h.Local && seen.After(out.LastHeartbeat) {
		out.LastHeartbeat = seen // its unchanged reports are not all written (localBeat)
	}
	out.NKey = h.NKey
	if h.Local && s.cfg.Subnet.IsValid() {
		out.Subnet = s.cfg.Subnet.String()
	}
	if h.State != store.HostJoining && cfg.Now().Sub(out.LastHeartbeat) > cfg.Unreachable {
		out.State = HostUnreachable
	}
	return out, nil
}

func newJoinSecret() string {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "mjt_" + base64.RawURLEncoding.EncodeToString(b)
}

// HostAdd registers a new host in state joining and returns a one-time
// join token (valid HostsConfig.JoinTTL) and the command that joins it.
// A taken name is errs.AlreadyExists; no join URL configured is
// errs.FailedPrecondition. Admins only.
func (s *Service) HostAdd(ctx context.Context, c Caller, name string) (HostInvite, error) {
	if err := requireAdmin(c, "add hosts"); err != nil {
		return HostInvite{}, err
	}
	if err := vm.ValidName("host", name); err != nil {
		return HostInvite{}, err
	}
	cfg := s.hostsConfig()
	if cfg.JoinURL == "" {
		return HostInvite{}, errs.New(errs.FailedPrecondition, "no address for new hosts to reach: set advertise (or public_ip) in the config, or --public-ip")
	}
	if cfg.JoinProblem != "" {
		return HostInvite{}, errs.New(errs.FailedPrecondition, "add host %s: %s", name, cfg.JoinProblem)
	}
	now := cfg.Now().UTC()
	h := store.Host{ID: vm.NewID(), Name: name, State: store.HostJoining, CreatedAt: now}
	secret := newJoinSecret()
	inv := HostInvite{Token: secret, ExpiresAt: now.Add(cfg.JoinTTL)}
	err := s.DB.Tx(ctx, func(q store.Q) error {
		if err := store.InsertHost(ctx, q, h); err != nil {
			return err
		}
		if err := store.InsertJoinToken(ctx, q, hashToken(secret), h.ID, inv.ExpiresAt, now); err != nil {
			return err
		}
		var err error
		inv.Host, err = s.hostView(ctx, q, h, cfg)
		return err
	})
	if err != nil {
		return HostInvite{}, fmt.Errorf("add host %s: %w", name, err)
	}
	inv.Command = fmt.Sprintf("minions node join %s --token %s", cfg.JoinURL, secret)
	s.log.Info("host added", "host", name, "host_id", h.ID, "by", c.Name)
	return inv, nil
}

// HostList lists every host with capacity, use and state. Admins only.
func (s *Service) HostList(ctx context.Context, c Caller) ([]Host, error) {
	if err := requireAdmin(c, "list hosts"); err != nil {
		return nil, err
	}
	cfg := s.hostsConfig()
	hs, err := store.ListHosts(ctx, s.DB)
	if err != nil {
		return nil, err
	}
	out := make([]Host, 0, len(hs))
	for _, h := range hs {
		v, err := s.hostView(ctx, s.DB, h, cfg)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// HostStatus shows one host by name (or ID). Admins only.
func (s *Service) HostStatus(ctx context.Context, c Caller, name string) (Host, error) {
	if err := requireAdmin(c, "see hosts"); err != nil {
		return Host{}, err
	}
	h, err := hostByRef(ctx, s.DB, name)
	if err != nil {
		return Host{}, err
	}
	return s.hostView(ctx, s.DB, h, s.hostsConfig())
}

func hostByRef(ctx context.Context, q store.Q, ref string) (store.Host, error) {
	if ref == "" {
		return store.Host{}, errs.New(errs.InvalidArgument, "host name is required")
	}
	if vm.IsID(ref) {
		if h, err := store.GetHostByID(ctx, q, ref); err == nil {
			return h, nil
		}
	}
	return store.GetHostByName(ctx, q, ref)
}

// HostCordon keeps new VMs off a host (the scheduler skips it); its VMs
// stay. Idempotent. A host still joining is errs.FailedPrecondition.
// Admins only.
func (s *Service) HostCordon(ctx context.Context, c Caller, name string) (Host, error) {
	return s.setHostState(ctx, c, name, store.HostCordoned)
}

// HostUncordon undoes HostCordon. Idempotent. Admins only.
func (s *Service) HostUncordon(ctx context.Context, c Caller, name string) (Host, error) {
	return s.setHostState(ctx, c, name, store.HostReady)
}

func (s *Service) setHostState(ctx context.Context, c Caller, name, state string) (Host, error) {
	if err := requireAdmin(c, "cordon hosts"); err != nil {
		return Host{}, err
	}
	cfg := s.hostsConfig()
	var out Host
	err := s.DB.Tx(ctx, func(q store.Q) error {
		h, err := hostByRef(ctx, q, name)
		if err != nil {
			return err
		}
		if h.State == store.HostJoining {
			return errs.New(errs.FailedPrecondition, "host %s has not joined yet", h.Name)
		}
		h.State = state
		if err := store.UpdateHost(ctx, q, h); err != nil {
			return err
		}
		out, err = s.hostView(ctx, q, h, cfg)
		return err
	})
	if err != nil {
		verb := "uncordon"
		if state == store.HostCordoned {
			verb = "cordon"
		}
		return Host{}, fmt.Errorf("%s host %s: %w", verb, name, err)
	}
	s.log.Info("host state", "host", out.Name, "state", state, "by", c.Name)
	return out, nil
}

// HostRemove forgets a host: its credential stops working at once (the
// fabric asks NodeKey on every connection). Refused with
// errs.FailedPrecondition while VMs are on it, and for the control
// plane's own host. Admins only.
func (s *Service) HostRemove(ctx context.Context, c Caller, name string) error {
	if err := requireAdmin(c, "remove hosts"); err != nil {
		return err
	}
	err := s.DB.Tx(ctx, func(q store.Q) error {
		h, err := hostByRef(ctx, q, name)
		if err != nil {
			return err
		}
		if h.Local {
			return errs.New(errs.FailedPrecondition, "host %s is the control plane's own host", h.Name)
		}
		use, err := store.HostUsage(ctx, q, h.ID, false)
		if err != nil {
			return err
		}
		if use.VMs > 0 {
			return errs.New(errs.FailedPrecondition, "host %s still has %d vm(s): destroy or move them first", h.Name, use.VMs)
		}
		return store.DeleteHost(ctx, q, h.ID)
	})
	if err != nil {
		return fmt.Errorf("remove host %s: %w", name, err)
	}
	s.log.Info("host removed", "host", name, "by", c.Name)
	return nil
}

// JoinHost exchanges a join token (once) for the node's membership: the
// node's public key becomes its credential on the fabric. A wrong, used or
// expired token is errs.Unauthenticated; a malformed key
// errs.InvalidArgument (and the token is not spent).
func (s *Service) JoinHost(ctx context.Context, req JoinRequest) (JoinResult, error) {
	if !validNodeKey(req.NKey) {
		return JoinResult{}, errs.New(errs.InvalidArgument, "nkey must be an NKey user public key (56 characters starting with U)")
	}
	if len(req.Version) > 64 || len(req.Address) > 256 {
		return JoinResult{}, errs.New(errs.InvalidArgument, "version or address too long")
	}
	if req.Address != "" && !validHostAddress(req.Address) {
		return JoinResult{}, errs.New(errs.InvalidArgument, "address %q: want an IP address or a host name", req.Address)
	}
	cfg := s.hostsConfig()
	// The control plane's configuration is wrong, not the token: say so
	// and leave the token for a retry once it is fixed.
	if err := CheckClusterSubnet(cfg.ClusterSubnet, s.cfg.Subnet); err != nil {
		return JoinResult{}, fmt.Errorf("join: %w", errs.New(errs.FailedPrecondition, "%s", err.Error()))
	}
	var out JoinResult
	err := s.DB.Tx(ctx, func(q store.Q) error {
		id, err := store.TakeJoinToken(ctx, q, hashToken(strings.TrimSpace(req.Token)), cfg.Now())
		if err != nil {
			return err
		}
		h, err := store.GetHostByID(ctx, q, id)
		if err != nil {
			return err
		}
		// The host's subnet, in the same transaction (the unique index
		// on hosts.subnet backs it up).
		if h.Subnet == "" {
			used, err := store.HostSubnets(ctx, q)
			if err != nil {
				return err
			}
			sub, err := nextHostSubnet(cfg.ClusterSubnet, s.cfg.Subnet, used)
			if err != nil {
				return err
			}
			h.Subnet = sub.String()
		}
		h.NKey, h.Address, h.Version = req.NKey, req.Address, req.Version
		if err := store.UpdateHost(ctx, q, h); err != nil {
			return err
		}
		out = JoinResult{HostID: h.ID, Name: h.Name, NATS: cfg.NATSURLs, CA: cfg.NATSCA, Subnet: h.Subnet}
		return nil
	})
	if err != nil {
		// A spent token stays spent even when the rest fails: TakeJoinToken
		// rolled back with the transaction, so commit its deletion alone.
		// A full cluster range is the control plane's to fix: the token
		// stays for a retry.
		if c := errs.ClassOf(err); c != errs.Unauthenticated && c != errs.FailedPrecondition {
			s.DB.Tx(ctx, func(q store.Q) error {
				_, e := store.TakeJoinToken(ctx, q, hashToken(strings.TrimSpace(req.Token)), cfg.Now())
				return e
			})
		}
		return JoinResult{}, fmt.Errorf("join: %w", err)
	}
	s.log.Info("host joined", "host", out.Name, "host_id", out.HostID, "address", req.Address, "subnet", out.Subnet)
	return out, nil
}

// NodeKey maps a node's public key to its host ID, for the fabric's
// authenticator: false for a key no host has.
func (s *Service) NodeKey(ctx context.Context, pub string) (string, bool) {
	h, err := store.GetHostByNKey(ctx, s.DB, pub)
	if err != nil {
		return "", false
	}
	return h.ID, true
}

// RecordHeartbeat stores node id's report, marking a joining host ready.
// The caller vouches for id (the fabric lets only that node publish its
// status). errs.NotFound for a removed host.
func (s *Service) RecordHeartbeat(ctx context.Context, id string, hb Heartbeat) error {
	if err := hb.validate(id); err != nil {
		return err
	}
	gone, err := s.RecordHeartbeats(ctx, map[string]Heartbeat{id: hb})
	if err != nil {
		return err
	}
	if len(gone) > 0 {
		return errs.New(errs.NotFound, "no host with id %q", id)
	}
	return nil
}

func (hb Heartbeat) validate(id string) error {
	if hb.CPUs < 0 || hb.MemoryMiB < 0 || hb.DiskMiB < 0 || hb.MemoryFreeMiB < 0 || hb.DiskFreeMiB < 0 || len(hb.Version) > 64 {
		return errs.New(errs.InvalidArgument, "heartbeat from %s: negative capacity or long version", id)
	}
	if hb.Address != "" && !validHostAddress(hb.Address) {
		return errs.New(errs.InvalidArgument, "heartbeat from %s: address %q is neither an IP address nor a host name", id, hb.Address)
	}
	return nil
}

// validHostAddress reports whether s is an IP address or a DNS host name
// (what a node may give as the address the control plane reaches it at).
func validHostAddress(s string) bool {
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// RecordHeartbeats stores many nodes' reports (by host ID) in one
// transaction, all at the same time, and returns the IDs of hosts that are
// gone (removed: the caller may disconnect them). A malformed report is
// left out (and logged), a malformed address left out of its report; the
// others are recorded. The local host's report is written only when it
// changed or a minute after the last write (localBeat). The control
// plane's receiver calls it once a second with what came in meanwhile.
func (s *Service) RecordHeartbeats(ctx context.Context, beats map[string]Heartbeat) (gone []string, err error) {
	now := s.hostsConfig().Now()
	recs := make([]store.HeartbeatRecord, 0, len(beats))
	var localID string  // the local host's, when its report is written
	var local Heartbeat // that report
	for id, hb := range beats {
		if hb.Address != "" && !validHostAddress(hb.Address) {
			s.log.Warn("heartbeat address dropped", "host_id", id, "address", hb.Address)
			hb.Address = ""
		}
		if err := hb.validate(id); err != nil {
			s.log.Warn("heartbeat dropped", "host_id", id, "err", err)
			continue
		}
		skip, isLocal := s.hosts.localBeat(id, hb, now)
		if skip {
			continue
		}
		if isLocal {
			localID, local = id, hb
		}
		recs = append(recs, store.HeartbeatRecord{ID: id, At: now, CPUs: hb.CPUs, MemoryMiB: hb.MemoryMiB, DiskMiB: hb.DiskMiB,
			MemoryFreeMiB: hb.MemoryFreeMiB, DiskFreeMiB: hb.DiskFreeMiB, Version: hb.Version, Address: hb.Address})
	}
	if len(recs) == 0 {
		return nil, nil
	}
	err = s.DB.Tx(ctx, func(q store.Q) error {
		var err error
		gone, err = store.RecordHeartbeats(ctx, q, recs)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("record %d heartbeats: %w", len(recs), err)
	}
	if localID != "" && !slices.Contains(gone, localID) {
		s.hosts.wroteLocal(local, now)
	}
	return gone, nil
}

// EnsureLocalHost registers the control plane's own host (once; later
// calls update its name, key and version) and returns its ID. Its VMs are
// those with no host. pub is the key its in-process node connects with.
func (s *Service) EnsureLocalHost(ctx context.Context, name, pub, version string) (string, error) {
	if err := vm.ValidName("host", name); err != nil {
		return "", err
	}
	var id string
	err := s.DB.Tx(ctx, func(q store.Q) error {
		h, err := store.GetLocalHost(ctx, q)
		switch {
		case errs.ClassOf(err) == errs.NotFound:
			h = store.Host{ID: vm.NewID(), Name: name, Local: true, State: store.HostReady, NKey: pub, Version: version,
				Address: "local", CreatedAt: s.hostsConfig().Now().UTC()}
			id = h.ID
			return store.InsertHost(ctx, q, h)
		case err != nil:
			return err
		}
		h.NKey, h.Version = pub, version
		if h.State == store.HostJoining {
			h.State = store.HostReady
		}
		id = h.ID
		return store.UpdateHost(ctx, q, h)
	})
	if err != nil {
		return "", fmt.Errorf("register the local host: %w", err)
	}
	s.hosts.beatMu.Lock()
	if s.hosts.localID != id {
		s.hosts.localID, s.hosts.localAt, s.hosts.localSeen = id, time.Time{}, time.Time{}
	}
	s.hosts.beatMu.Unlock()
	return id, nil
}
