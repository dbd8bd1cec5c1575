package daemon

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/service"
)

// Several hosts (issue 14). `serve` embeds a NATS server (the fabric) by
// default, on nats_bind (loopback: one host needs nothing), or joins an
// external cluster at nats_url. Either way it registers this host and
// runs its node agent in-process, and records every node's heartbeats.
// `host add` prints a join command naming advertise (or public_ip, or the
// API's bind address) and the API's port.

// localSeedFile keeps the in-process node's NKey seed under the state
// dir, so its key stays the same across restarts (an external cluster's
// configuration names it).
const localSeedFile = "node-local.seed"

// cluster is what startCluster started; close releases it after the
// errgroup is done.
type cluster struct {
	srv     *fabric.Server
	control *fabric.Conn
	node    *fabric.Conn
	remotes *remotes
}

func (cl *cluster) close() {
	if cl.remotes != nil {
		cl.remotes.closeAll()
	}
	if cl.node != nil {
		cl.node.Close()
	}
	if cl.control != nil {
		cl.control.Close()
	}
	if cl.srv != nil {
		cl.srv.Close()
	}
}

// startCluster brings up the fabric, registers this host, starts its node
// agent and the heartbeat receiver (under g), and tells the service the
// join address. On error it undoes what it started and returns a nil
// cluster.
func startCluster(ctx context.Context, g *errgroup.Group, cfg config.Config, e *local.Installation, log *slog.Logger, paths local.Paths, apiAddr net.Addr) (cl *cluster, err error) {
	cl = &cluster{}
	began := time.Now()
	defer func() {
		if err != nil {
			cl.close()
			cl = nil
		}
	}()
	svc := e.Service
	natsURLs := []string{cfg.NATSURL}
	var nodeOpts []fabric.Option
	var caPEM []byte
	if cfg.NATSURL == "" {
		// TLS with a CA of our own for the names nodes reach us by.
		bindHost, _, _ := net.SplitHostPort(cfg.NATSBind)
		tlsCfg, ca, err := fabric.ServerTLS(filepath.Join(paths.State, "nats-tls"), []string{cfg.AdvertiseHost(), bindHost, "127.0.0.1", "localhost"})
		if err != nil {
			return nil, fmt.Errorf("nats tls: %w", err)
		}
		caPEM = ca
		cl.srv, err = fabric.Start(fabric.Config{Listen: cfg.NATSBind, StoreDir: filepath.Join(paths.State, "nats"), Log: log.With("component", "fabric"), TLS: tlsCfg,
			NodeKey: func(pub string) (string, bool) {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				return svc.NodeKey(ctx, pub)
			}})
		if err != nil {
			return nil, fmt.Errorf("nats: %w", err)
		}
		if cl.control, err = cl.srv.Control("minions-control"); err != nil {
			return nil, err
		}
		port := strconv.Itoa(cl.srv.Addr().(*net.TCPAddr).Port)
		natsURLs = []string{"nats://" + net.JoinHostPort(cfg.AdvertiseHost(), port)}
		nodeOpts = append(nodeOpts, cl.srv.InProcess())
		log.Info("nats listening", "addr", cl.srv.Addr().String(), "advertised", natsURLs[0])
	} else {
		var opts []fabric.Option
		if cfg.NATSSeedFile != "" {
			seed, err := os.ReadFile(cfg.NATSSeedFile)
			if err != nil {
				return nil, fmt.Errorf("nats_seed_file: %w", err)
			}
			o, err := fabric.WithSeed(string(seed))
			if err != nil {
				return nil, err
			}
			opts = append(opts, o)
		}
		if cl.control, err = fabric.ConnectControl(cfg.NATSURL, opts...); err != nil {
			return nil, err
		}
		log.Info("nats connected", "url", cfg.NATSURL)
	}

	seed, pub, err := localNodeKey(paths.State)
	if err != nil {
		return nil, err
	}
	id, err := svc.EnsureLocalHost(ctx, localHostName(), pub, cli.Version)
	if err != nil {
		return nil, err
	}
	if cfg.NATSURL != "" {
		log.Info("this host's node key (the external nats cluster must admit it with fabric.NodePermissions)", "host_id", id, "nkey", pub)
	}

	// The engines of the other hosts, each a nodeagent.Remote: those
	// registered now, and each host that joins at its first heartbeat.
	cl.remotes = &remotes{conn: cl.control, svc: svc, local: id, log: log, m: map[string]*nodeagent.Remote{}}
	if cfg.NATSURL == "" {
		// The embedded fabric's CA signs the control plane's client
		// certificate for direct streams to nodes (their tickets come
		// over NATS).
		dt, err := DirectTLS(paths)
		if err != nil {
			return nil, fmt.Errorf("direct streams: %w", err)
		}
		cl.remotes.direct = dt
	}
	others, err := svc.RemoteHostIDs(ctx)
	if err != nil {
		return nil, err
	}
	for _, h := range others {
		cl.remotes.ensure(h)
	}

	// Heartbeats of every node, the local one included: the latest of
	// each, written once a second in one transaction.
	srv := cl.srv
	stop, err := nodeagent.ListenBatched(cl.control, time.Second, func(batch map[string]nodeagent.Heartbeat) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		beats := make(map[string]service.Heartbeat, len(batch))
		for id, hb := range batch {
			beats[id] = service.Heartbeat{CPUs: hb.CPUs, MemoryMiB: hb.MemoryMiB, DiskMiB: hb.DiskMiB,
				MemoryFreeMiB: hb.MemoryFreeMiB, DiskFreeMiB: hb.DiskFreeMiB, Version: hb.Version, Address: hb.Address}
		}
		gone, err := svc.RecordHeartbeats(ctx, beats)
		if err != nil {
			log.Warn("heartbeats", "hosts", len(beats), "err", err)
		}
		removed := map[string]bool{}
		for _, id := range gone {
			removed[id] = true
			if srv != nil {
				// A removed host still connected: its credential no longer
				// admits it, and its connection goes now.
				log.Info("disconnected a removed host", "host_id", id, "connections", srv.DisconnectNode(id))
			}
			cl.remotes.drop(id)
		}
		if err != nil {
			return
		}
		for id := range beats {
			// A host that joined since: its engine now; then whatever
			// waits for it to be heard from (tombstones, interrupted
			// creates, exits missed while it was away).
			if !removed[id] && cl.remotes.ensure(id) {
				svc.HostHeard(ctx, id)
			}
			// What it can do: an older node is asked only what it
			// understands (nodeagent.Capabilities).
			cl.remotes.setCaps(id, batch[id].Caps)
		}
	})
	if err != nil {
		return nil, err
	}
	if cl.node, err = fabric.ConnectNode(strings.Join(natsURLs, ","), id, seed, nodeOpts...); err != nil {
		stop()
		return nil, fmt.Errorf("local node: %w", err)
	}
	var natsAddr net.Addr
	if cl.srv != nil {
		natsAddr = cl.srv.Addr()
	}
	svc.SetHosts(service.HostsConfig{JoinURL: cfg.JoinURL(apiAddr), NATSURLs: natsURLs, NATSCA: string(caPEM), Unreachable: HostUnreachableAfter,
		ClusterSubnet: cfg.ClusterPrefix(), JoinProblem: cfg.JoinReach(apiAddr, natsAddr)})
	log.Info("cluster ready", "host_id", id, "ms", time.Since(began).Milliseconds())
	g.Go(func() error {
		defer stop()
		return nodeagent.Run(ctx, nodeagent.Config{ID: id, Conn: cl.node, StateDir: paths.State, Version: cli.Version, Log: log})
	})
	return cl, nil
}

// localNodeKey reads (or makes, once) the in-process node's seed.
func localNodeKey(stateDir string) (seed, pub string, err error) {
	path := filepath.Join(stateDir, localSeedFile)
	if b, err := os.ReadFile(path); err == nil {
		s := strings.TrimSpace(string(b))
		if p, err := fabric.PublicKeyOf(s); err == nil {
			return s, p, nil
		}
	}
	if seed, pub, err = fabric.NewNodeKey(); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(path, []byte(seed+"\n"), 0o600); err != nil {
		return "", "", fmt.Errorf("write %s: %w", path, err)
	}
	return seed, pub, nil
}

// localHostName is this host's name as a valid host name: the system's
// host name lower-cased, other characters as hyphens; "local" if that is
// not usable.
func localHostName() string {
	h, _ := os.Hostname()
	h = strings.ToLower(strings.Split(h, ".")[0])
	b := []byte(h)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			b[i] = '-'
		}
	}
	name := strings.Trim(string(b), "-")
	if len(name) > 40 {
		name = strings.Trim(name[:40], "-")
	}
	if name == "" || name[0] < 'a' || name[0] > 'z' || isHexID(name) {
		return "local"
	}
	return name
}

func isHexID(s string) bool {
	if len(s) != 12 {
		return false
	}
	_, err := strconv.ParseUint(s, 16, 64)
	return err == nil
}

// HostUnreachableAfter is how long without a heartbeat (every 2 s) until
// a host, and the VMs on it, show unreachable.
const HostUnreachableAfter = 7 * time.Second

// remotes keeps one nodeagent.Remote per registered host other than this
// one and hands each to the service (service.SetRemoteEngine). The
// guest agents of a node's VMs trust that node's key, which never leaves
// the node: a Remote has no signer of its own, and the node signs each
// agent login for it (nodeagent.RemoteConfig.Signer nil).
type remotes struct {
	conn  *fabric.Conn
	svc   *service.Service
	local string // this host's ID: never remote
	log   *slog.Logger
	// direct is the client TLS for direct streams to nodes (DirectTLS);
	// nil: agent streams over NATS only.
	direct *tls.Config

	mu sync.Mutex
	m  map[string]*nodeagent.Remote
}

// ensure makes host id's Remote if it has none; false for this host, or
// when it cannot (logged).
func (rs *remotes) ensure(id string) bool {
	if id == rs.local {
		return false
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.m == nil {
		return false // closed
	}
	if _, ok := rs.m[id]; ok {
		return true
	}
	r, err := nodeagent.NewRemote(nodeagent.RemoteConfig{ID: id, Conn: rs.conn, Log: rs.log, DirectTLS: rs.direct})
	if err != nil {
		rs.log.Warn("remote engine", "host_id", id, "err", err)
		return false
	}
	rs.m[id] = r
	rs.svc.SetRemoteEngine(id, r)
	rs.log.Info("remote engine ready", "host_id", id)
	return true
}

// setCaps records the capabilities host id announced (its Remote's
// SetCaps); a host without a Remote is skipped.
func (rs *remotes) setCaps(id string, caps []string) {
	rs.mu.Lock()
	r := rs.m[id]
	rs.mu.Unlock()
	if r != nil {
		r.SetCaps(caps)
	}
}

// drop forgets host id's Remote (a removed host).
func (rs *remotes) drop(id string) {
	rs.mu.Lock()
	r := rs.m[id]
	delete(rs.m, id)
	rs.mu.Unlock()
	if r != nil {
		rs.svc.SetRemoteEngine(id, nil)
		r.Close()
	}
}

// closeAll takes every Remote from the service and closes it.
func (rs *remotes) closeAll() {
	rs.mu.Lock()
	m := rs.m
	rs.m = nil
	rs.mu.Unlock()
	for id, r := range m {
		rs.svc.SetRemoteEngine(id, nil)
		r.Close()
	}
}
