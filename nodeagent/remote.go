package nodeagent

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vsockcli"
)

// RemoteConfig configures a Remote.
type RemoteConfig struct {
	ID   string       // the node's host ID (required)
	Conn *fabric.Conn // the control plane's connection (required)
	// Signer is the key the node's guest agents trust (the node's engine
	// HostKey), if the control plane holds it; nil (the usual case: the
	// key stays on the node) has the node sign each agent login (see
	// sign.go).
	Signer ssh.Signer
	// AcceptTimeout bounds how long a call waits for the node to accept
	// it (not how long the call may run: that is the caller's ctx);
	// default 10 s.
	AcceptTimeout time.Duration
	// CheckInterval is how often a call in flight asks the node whether
	// it still runs it; a node that forgot it (restarted) or does not
	// answer three times running fails the call with errs.Unavailable
	// instead of leaving it to the caller's deadline. Default 5 s.
	CheckInterval time.Duration
	// DirectTLS, if set, carries agent streams and the port tunnel
	// (DialPort) over direct TLS connections to the node, brokered over
	// the fabric (direct.go), with this config's client certificate
	// (fabric.ControlCertificate). A node without a direct listener, or
	// one the control plane cannot reach, is reached over NATS instead.
	// Nil: NATS only.
	DirectTLS *tls.Config
	// AgentIdle is how long a pooled agent connection of one of the
	// node's VMs nobody uses stays open (agentpool.go); default 30 s.
	// AgentPoolMax bounds the pooled connections (default 256; negative:
	// no pool, every Agent call dials).
	AgentIdle    time.Duration
	AgentPoolMax int
	Log          *slog.Logger
}

// Validate checks the configuration.
func (c *RemoteConfig) Validate() error {
	if !fabric.ValidID(c.ID) || c.Conn == nil {
		return errs.New(errs.InvalidArgument, "remote engine: a node id and a connection are required")
	}
	if c.AcceptTimeout < 0 || c.CheckInterval < 0 || c.AgentIdle < 0 {
		return errs.New(errs.InvalidArgument, "remote engine: negative timeout")
	}
	return nil
}

// Remote is the engine of another host, reached over the fabric: every
// method is a call to the node's ServeEngine, with the same contract as
// engine.Engine (errors keep their errs class and message). A call runs
// until the caller's ctx ends, however long; ctx ending cancels it on the
// node. A node that does not serve its engine is errs.Unavailable.
//
// ConsoleLog returns a path on the node's host. Safe for concurrent use.
type Remote struct {
	cfg   RemoteConfig
	log   *slog.Logger
	unsub func() error

	mu    sync.Mutex
	calls map[string]*pending
	exit  engine.ExitFunc

	tmu    sync.Mutex
	tunnel *ssh.Client // the port tunnel (tunnel.go), nil until used

	agents *agentPool // pooled agent clients of the node's VMs

	smu    sync.Mutex
	signer ssh.Signer // the node-backed signer, once its key is known

	directStreams, natsStreams atomic.Int64
	diskDirect, diskNATS       atomic.Int64 // disk streams (transfer_direct.go)
	diskPeer, diskPeerFailed   atomic.Int64 // node-to-node disk streams (transfer_peer.go)
	diskResumed                atomic.Int64 // dropped import streams resumed (transfer_resume.go)
	cutExport                  atomic.Int64 // tests: drop the next export's stream after this many bytes

	// node-to-node bundles (transfer_peer_bundle.go)
	bundlePeer, bundlePeerFailed atomic.Int64
	// node-to-node pre-copies (transfer_memory_precopy.go)
	preCopyPeer, preCopyPeerFailed atomic.Int64

	caps atomic.Pointer[[]string] // the node's capabilities (SetCaps); nil: not heard yet
}

type pending struct {
	ch   chan callFrame
	gone chan struct{}
}

var _ engine.Engine = (*Remote)(nil)

// NewRemote subscribes to the node's replies and exits. Close it.
func NewRemote(cfg RemoteConfig) (*Remote, error) {
	if cfg.AcceptTimeout == 0 {
		cfg.AcceptTimeout = 10 * time.Second
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = 5 * time.Second
	}
	if cfg.AgentIdle == 0 {
		cfg.AgentIdle = 30 * time.Second
	}
	if cfg.AgentPoolMax == 0 {
		cfg.AgentPoolMax = 256
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &Remote{cfg: cfg, log: cfg.Log.With("component", "nodeagent", "host_id", cfg.ID), calls: map[string]*pending{},
		agents: newAgentPool(cfg.AgentIdle, cfg.AgentPoolMax)}
	// One subscription for replies and exits: an exit published before a
	// call's reply reaches ExitFunc before the call returns.
	unsub, err := cfg.Conn.Subscribe(engineEvents(cfg.ID), r.event)
	if err != nil {
		return nil, err
	}
	r.unsub = unsub
	return r, nil
}

// Close stops receiving the node's replies and exits, and closes the
// port tunnel and the pooled agent connections (lent ones on their last
// release).
func (r *Remote) Close() error {
	r.agents.close()
	r.tmu.Lock()
	if r.tunnel != nil {
		r.tunnel.Close()
		r.tunnel = nil
	}
	r.tmu.Unlock()
	return r.unsub()
}

// StreamCounts reports how many agent streams were opened directly and
// how many over NATS (for tests and metrics).
func (r *Remote) StreamCounts() (direct, nats int64) {
	return r.directStreams.Load(), r.natsStreams.Load()
}

// Node is the node's host ID.
func (r *Remote) Node() string { return r.cfg.ID }

func (r *Remote) event(m fabric.Msg) {
	if m.Subject == exitSubject(r.cfg.ID) {
		var e engine.Exit
		if json.Unmarshal(m.Data, &e) != nil {
			return
		}
		r.agents.forget(e.ID)
		r.mu.Lock()
		fn := r.exit
		r.mu.Unlock()
		if fn != nil {
			fn(context.Background(), e)
		}
		return
	}
	call, ok := strings.CutPrefix(m.Subject, replySubject(r.cfg.ID, ""))
	if !ok {
		return
	}
	var f callFrame
	if json.Unmarshal(m.Data, &f) != nil {
		return
	}
	r.mu.Lock()
	p := r.calls[call]
	r.mu.Unlock()
	if p == nil {
		return
	}
	if !f.Done {
		select { // a progress line is worth less than a stuck fabric
		case p.ch <- f:
		default:
		}
		return
	}
	select {
	case p.ch <- f:
	case <-p.gone:
	}
}

// call runs method on the node and decodes its result into out (if set).
func (r *Remote) call(ctx context.Context, method string, req callRequest, progress engine.Progress, out any) error {
	req.Call = newToken()
	if dl, ok := ctx.Deadline(); ok {
		req.Deadline = dl
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	p := &pending{ch: make(chan callFrame, 64), gone: make(chan struct{})}
	r.mu.Lock()
	r.calls[req.Call] = p
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.calls, req.Call)
		r.mu.Unlock()
		close(p.gone)
	}()
	actx, cancel := context.WithTimeout(ctx, r.cfg.AcceptTimeout)
	ack, err := r.cfg.Conn.Request(actx, engineSubject(r.cfg.ID, method), body)
	cancel()
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s on node %s: %w", method, r.cfg.ID, ctx.Err())
	case errors.Is(err, errs.Unavailable):
		return errs.New(errs.Unavailable, "node %s does not serve its engine (is its agent running?)", r.cfg.ID)
	case err != nil:
		return errs.New(errs.Unavailable, "node %s did not accept %s: %v", r.cfg.ID, method, err)
	case string(ack) != "ok":
		return errs.New(errs.Unavailable, "node %s refused %s: %s", r.cfg.ID, method, ack)
	}
	check := time.NewTicker(r.cfg.CheckInterval)
	defer check.Stop()
	misses := 0
	var forgotten <-chan time.Time // set once the node says it does not run the call
	for {
		select {
		case <-check.C:
			if forgotten != nil {
				continue
			}
			switch r.alive(ctx, req.Call) {
			case "yes":
				misses = 0
			case "no":
				// Its reply may still be on the way: give it a moment.
				forgotten = time.After(r.cfg.CheckInterval)
			default:
				if misses++; misses >= 3 {
					return errs.New(errs.Unavailable, "%s on node %s: the node stopped answering", method, r.cfg.ID)
				}
			}
		case <-forgotten:
			return errs.New(errs.Unavailable, "%s on node %s: the node no longer runs the call (did its agent restart?)", method, r.cfg.ID)
		case f := <-p.ch:
			if !f.Done {
				progress.Say(f.Step)
				continue
			}
			if f.Error != nil {
				return fromWire(f.Error)
			}
			if out != nil {
				if err := json.Unmarshal(f.Result, out); err != nil {
					return fmt.Errorf("%s on node %s: decode reply: %w", method, r.cfg.ID, err)
				}
			}
			return nil
		case <-ctx.Done():
			b, _ := json.Marshal(callRequest{Call: req.Call})
			r.cfg.Conn.Publish(engineSubject(r.cfg.ID, mCancel), b)
			return fmt.Errorf("%s on node %s: %w", method, r.cfg.ID, ctx.Err())
		}
	}
}

// CancelMoves cancels the calls the node runs to move instance id (its
// exports, imports and live migrations, see mCancelMoves): a restarted
// control plane's first step in settling a move, whose streams broke
// with the process that relayed them. It returns how many it cancelled.
func (r *Remote) CancelMoves(ctx context.Context, id string) (int, error) {
	if !vm.IsID(id) {
		return 0, errs.New(errs.InvalidArgument, "invalid vm id %q", id)
	}
	b, _ := json.Marshal(callRequest{Call: newToken(), ID: id})
	actx, cancel := context.WithTimeout(ctx, r.cfg.AcceptTimeout)
	defer cancel()
	ans, err := r.cfg.Conn.Request(actx, engineSubject(r.cfg.ID, mCancelMoves), b)
	if err != nil {
		return 0, errs.New(errs.Unavailable, "cancel the moves of vm %s on node %s: %v", id, r.cfg.ID, err)
	}
	n, err := strconv.Atoi(string(ans))
	if err != nil {
		return 0, fmt.Errorf("cancel the moves of vm %s on node %s: answer %q", id, r.cfg.ID, ans)
	}
	return n, nil
}

// alive asks the node whether it runs call: "yes", "no", or "" when it
// does not answer.
func (r *Remote) alive(ctx context.Context, call string) string {
	b, _ := json.Marshal(callRequest{Call: call})
	actx, cancel := context.WithTimeout(ctx, r.cfg.AcceptTimeout)
	defer cancel()
	ans, err := r.cfg.Conn.Request(actx, engineSubject(r.cfg.ID, mAlive), b)
	if err != nil {
		return ""
	}
	return string(ans)
}

func (r *Remote) instance(ctx context.Context, method string, req callRequest, progress engine.Progress) (engine.Instance, error) {
	var inst engine.Instance
	err := r.call(ctx, method, req, progress, &inst)
	return inst, err
}

// Create implements engine.Engine.
func (r *Remote) Create(ctx context.Context, spec engine.CreateSpec, progress engine.Progress) (engine.Instance, error) {
	inst, err := r.instance(ctx, mCreate, callRequest{Create: &spec}, progress)
	return r.warmAgent(inst, err)
}

var (
	_ engine.TemplateKeeper = (*Remote)(nil)
	_ engine.Forker         = (*Remote)(nil)
)

// Fork implements engine.Forker: the node forks instance srcID into a
// new instance of its own (the fork runs where its source runs).
func (r *Remote) Fork(ctx context.Context, srcID string, spec engine.ForkSpec, progress engine.Progress) (engine.Instance, error) {
	inst, err := r.instance(ctx, mFork, callRequest{ID: srcID, ForkSpec: &spec}, progress)
	return r.warmAgent(inst, err)
}

// WarmTemplate implements engine.TemplateKeeper: the node builds the
// template (fetching the image from the control plane if it lacks it),
// telling progress each step.
func (r *Remote) WarmTemplate(ctx context.Context, ref string, cpus, memMiB, diskGiB int, progress engine.Progress) (engine.Template, error) {
	var t engine.Template
	err := r.call(ctx, mWarmTemplate, callRequest{Warm: &warmArgs{Image: ref, CPUs: cpus, MemoryMiB: memMiB, DiskGiB: diskGiB}}, progress, &t)
	return t, err
}

// Templates implements engine.TemplateKeeper: the node's complete
// templates.
func (r *Remote) Templates(ctx context.Context) ([]engine.Template, error) {
	var ts []engine.Template
	err := r.call(ctx, mTemplates, callRequest{}, nil, &ts)
	return ts, err
}

// Start implements engine.Engine.
func (r *Remote) Start(ctx context.Context, id string, progress engine.Progress) (engine.Instance, error) {
	inst, err := r.instance(ctx, mStart, callRequest{ID: id}, progress)
	r.agents.forget(id)
	return r.warmAgent(inst, err)
}

// Stop implements engine.Engine.
func (r *Remote) Stop(ctx context.Context, id string) (engine.Instance, error) {
	defer r.agents.forget(id)
	return r.instance(ctx, mStop, callRequest{ID: id}, nil)
}

// Restart implements engine.Engine.
func (r *Remote) Restart(ctx context.Context, id string, progress engine.Progress) (engine.Instance, error) {
	inst, err := r.instance(ctx, mRestart, callRequest{ID: id}, progress)
	r.agents.forget(id)
	return r.warmAgent(inst, err)
}

// Destroy implements engine.Engine.
func (r *Remote) Destroy(ctx context.Context, id string) error {
	defer r.agents.forget(id)
	return r.call(ctx, mDestroy, callRequest{ID: id}, nil, nil)
}

// Rename implements engine.Engine.
func (r *Remote) Rename(ctx context.Context, id, name string) (engine.Instance, error) {
	return r.instance(ctx, mRename, callRequest{ID: id, Name: name}, nil)
}

// Resize implements engine.Engine.
func (r *Remote) Resize(ctx context.Context, id string, spec engine.ResizeSpec) (engine.Instance, error) {
	return r.instance(ctx, mResize, callRequest{ID: id, Resize: &spec}, nil)
}

// Snapshot implements engine.Engine.
func (r *Remote) Snapshot(ctx context.Context, id string, spec engine.SnapshotSpec, progress engine.Progress) (engine.SnapshotInfo, error) {
	var s engine.SnapshotInfo
	err := r.call(ctx, mSnapshot, callRequest{ID: id, SnapshotSpec: &spec}, progress, &s)
	return s, err
}

// Snapshots implements engine.Engine.
func (r *Remote) Snapshots(ctx context.Context, id string) ([]engine.SnapshotInfo, error) {
	var s []engine.SnapshotInfo
	err := r.call(ctx, mSnapshots, callRequest{ID: id}, nil, &s)
	return s, err
}

// RestoreSnapshot implements engine.Engine.
func (r *Remote) RestoreSnapshot(ctx context.Context, id, snapshot string, progress engine.Progress) (engine.Instance, error) {
	inst, err := r.instance(ctx, mRestoreSnapshot, callRequest{ID: id, Snapshot: snapshot}, progress)
	r.agents.forget(id)
	return r.warmAgent(inst, err)
}

// DeleteSnapshot implements engine.Engine.
func (r *Remote) DeleteSnapshot(ctx context.Context, id, snapshot string) error {
	return r.call(ctx, mDeleteSnapshot, callRequest{ID: id, Snapshot: snapshot}, nil, nil)
}

// Get implements engine.Engine.
func (r *Remote) Get(ctx context.Context, id string) (engine.Instance, error) {
	return r.instance(ctx, mGet, callRequest{ID: id}, nil)
}

// List implements engine.Engine.
func (r *Remote) List(ctx context.Context) ([]engine.Instance, error) {
	var l []engine.Instance
	err := r.call(ctx, mList, callRequest{}, nil, &l)
	return l, err
}

// Reconcile implements engine.Engine.
func (r *Remote) Reconcile(ctx context.Context) error {
	return r.call(ctx, mReconcile, callRequest{}, nil, nil)
}

// OnExit implements engine.Engine: fn hears the exits the node publishes
// (while this Remote is open).
func (r *Remote) OnExit(fn engine.ExitFunc) {
	r.mu.Lock()
	r.exit = fn
	r.mu.Unlock()
}

// ReattachPorts implements engine.Engine.
func (r *Remote) ReattachPorts(ctx context.Context) error {
	return r.call(ctx, mReattachPorts, callRequest{}, nil, nil)
}

// Capacity implements engine.Engine.
func (r *Remote) Capacity(ctx context.Context) (engine.Capacity, error) {
	var c engine.Capacity
	err := r.call(ctx, mCapacity, callRequest{}, nil, &c)
	return c, err
}

// ConsoleLog implements engine.Engine: the path is on the node's host.
func (r *Remote) ConsoleLog(ctx context.Context, id string) (string, error) {
	var p string
	err := r.call(ctx, mConsoleLog, callRequest{ID: id}, nil, &p)
	return p, err
}

// DialAgent implements engine.Engine: a direct TLS connection to the
// node when RemoteConfig.DirectTLS is set and the node has a direct
// listener (direct.go), otherwise a stream over two NATS subjects of the
// node (see stream).
func (r *Remote) DialAgent(ctx context.Context, id string) (net.Conn, error) {
	if r.cfg.DirectTLS != nil {
		c, err := r.dialDirect(ctx, kindAgent, id)
		var nd *errNoDirect
		switch {
		case err == nil:
			r.directStreams.Add(1)
			return c, nil
		case !errors.As(err, &nd):
			return nil, err
		}
		r.log.Debug("agent stream over nats", "vm_id", id, "err", err)
	}
	r.natsStreams.Add(1)
	sid := newToken()
	st, err := newStream(r.cfg.Conn, streamOut(r.cfg.ID, sid), streamIn(r.cfg.ID, sid), "control", "node:"+r.cfg.ID+"/"+id)
	if err != nil {
		return nil, err
	}
	if err := r.call(ctx, mDialAgent, callRequest{ID: id, Stream: sid}, nil, nil); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// Agent implements engine.Engine: the client is lent from the pool of
// one connection per VM of the node (agentpool.go); its Close returns it.
func (r *Remote) Agent(ctx context.Context, id string) (*vsockcli.Client, error) {
	return r.agents.lease(ctx, id, func(ctx context.Context) (*vsockcli.Client, error) {
		return r.dialAgentClient(ctx, id)
	})
}

// warmAgent passes a call's result through, first dialing the agent of
// the VM it left running in the background (agentpool.go).
func (r *Remote) warmAgent(inst engine.Instance, err error) (engine.Instance, error) {
	if err == nil && inst.State == vm.Running {
		id := inst.ID
		r.agents.warm(id, func(ctx context.Context) (*vsockcli.Client, error) { return r.dialAgentClient(ctx, id) })
	}
	return inst, err
}

// AgentPoolSize is the number of pooled agent connections (for tests and
// metrics).
func (r *Remote) AgentPoolSize() int { return r.agents.size() }

// dialAgentClient is an SSH client over DialAgent's stream, authenticated
// with cfg.Signer (or signed by the node), checking the key the node
// pinned.
func (r *Remote) dialAgentClient(ctx context.Context, id string) (*vsockcli.Client, error) {
	signer, err := r.agentSigner(ctx)
	if err != nil {
		return nil, err
	}
	// The pinned key and the stream in parallel: one round trip less.
	var pin string
	keyErr := make(chan error, 1)
	go func() { keyErr <- r.call(ctx, mAgentKey, callRequest{ID: id}, nil, &pin) }()
	c, err := r.DialAgent(ctx, id)
	if kerr := <-keyErr; kerr != nil {
		if c != nil {
			c.Close()
		}
		return nil, kerr
	}
	if err != nil {
		return nil, err
	}
	cl, err := vsockcli.NewClient(ctx, c, vsockcli.Config{Signer: signer, User: "root",
		HostKey: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			if pin == "" {
				return nil // first contact: the node has not pinned one yet
			}
			if got := string(bytes.TrimSpace(ssh.MarshalAuthorizedKey(key))); got != pin {
				return errs.New(errs.PermissionDenied, "guest agent presented key %s, not the pinned one", ssh.FingerprintSHA256(key))
			}
			return nil
		}})
	if err != nil {
		r.dropSigner()
		return nil, err
	}
	return cl, nil
}
