package nodeagent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// ServeConfig configures ServeEngine.
type ServeConfig struct {
	ID     string        // the node's host ID (required)
	Conn   *fabric.Conn  // connected with the node's credential (required)
	Engine engine.Engine // this host's engine (required)
	// Signer is the key this host's guest agents trust, with which the
	// node signs agent logins for the control plane (sign.go); nil takes
	// the engine's (AgentSigner), if it has one.
	Signer ssh.Signer
	// Direct, if set, is the node's direct listener: ServeEngine issues
	// its tickets and serves it (closing it when ServeEngine returns).
	// Nil: the control plane reaches agents over NATS only.
	Direct *Direct
	Log    *slog.Logger
}

// Validate checks the configuration.
func (c *ServeConfig) Validate() error {
	if !fabric.ValidID(c.ID) || c.Conn == nil || c.Engine == nil {
		return errs.New(errs.InvalidArgument, "engine server: an id, a connection and an engine are required")
	}
	return nil
}

// AgentKeyer is implemented by an engine that can tell the pinned key of
// an instance's guest agent (engine.Local); ServeEngine needs it for
// Remote.Agent.
type AgentKeyer interface {
	AgentKey(ctx context.Context, id string) (string, error)
}

var tokenRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9]{8,64}$`) })

// newToken is a fresh call or stream ID.
func newToken() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// ServeEngine serves cfg.Engine on the node's engine subjects until ctx
// ends (then it returns nil, cancels the calls in flight and closes the
// agent streams). Each call runs in its own goroutine under the caller's
// deadline; progress steps and the result are published on the node's
// status subjects, and so are the engine's exits (it takes the engine's
// OnExit).
func ServeEngine(ctx context.Context, cfg ServeConfig) error {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	s := &server{cfg: cfg, log: cfg.Log.With("component", "nodeagent", "host_id", cfg.ID),
		calls: map[string]context.CancelFunc{}, moving: map[string]string{}, streams: map[*stream]bool{}}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.ctx = ctx
	cfg.Engine.OnExit(func(_ context.Context, e engine.Exit) {
		b, _ := json.Marshal(e)
		if err := cfg.Conn.Publish(exitSubject(cfg.ID), b); err != nil {
			s.log.Warn("publish exit", "vm_id", e.ID, "err", err)
		}
	})
	defer cfg.Engine.OnExit(nil)
	unsub, err := cfg.Conn.Subscribe(engineSubject(cfg.ID, "*"), s.handle)
	if err != nil {
		return err
	}
	fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
	err = cfg.Conn.Flush(fctx)
	fcancel()
	if err != nil {
		unsub()
		return errs.New(errs.Unavailable, "engine server: %w", err)
	}
	if cfg.Direct != nil {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); cfg.Direct.serve(ctx, cfg.Engine) }()
		s.log.Info("direct listener", "addr", cfg.Direct.Addr())
	}
	s.log.Info("engine served")
	<-ctx.Done()
	unsub()
	s.mu.Lock()
	for st := range s.streams {
		st.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

type server struct {
	cfg ServeConfig
	log *slog.Logger
	ctx context.Context
	wg  sync.WaitGroup

	mu      sync.Mutex
	calls   map[string]context.CancelFunc
	moving  map[string]string // call -> instance, of the calls that move one (moveMethods)
	streams map[*stream]bool
}

// moveMethods are the calls that carry a move's streams (mCancelMoves).
var moveMethods = map[string]bool{
	mExportDisk: true, mImportDisk: true, mExportBundle: true, mImportBundle: true,
	mLiveMigrate: true, mLiveFinish: true, mExportPreCopy: true, mImportPreCopy: true,
}

func (s *server) handle(m fabric.Msg) {
	method := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	var req callRequest
	if err := json.Unmarshal(m.Data, &req); err != nil || !tokenRE().MatchString(req.Call) {
		m.Respond([]byte("bad request"))
		return
	}
	switch method {
	case mCancel:
		s.mu.Lock()
		if c := s.calls[req.Call]; c != nil {
			c()
		}
		s.mu.Unlock()
		return
	case mAlive:
		s.mu.Lock()
		_, ok := s.calls[req.Call]
		s.mu.Unlock()
		m.Respond([]byte(map[bool]string{true: "yes", false: "no"}[ok]))
		return
	case mCancelMoves:
		n := 0
		s.mu.Lock()
		for call, id := range s.moving {
			if id == req.ID && req.ID != "" {
				s.calls[call]()
				n++
			}
		}
		s.mu.Unlock()
		if n > 0 {
			s.log.Info("cancelled the calls moving an instance", "vm_id", req.ID, "calls", n)
		}
		m.Respond([]byte(strconv.Itoa(n)))
		return
	}
	m.Respond([]byte("ok"))
	ctx, cancel := context.WithCancel(s.ctx)
	if !req.Deadline.IsZero() {
		ctx, cancel = context.WithDeadline(s.ctx, req.Deadline)
	}
	s.mu.Lock()
	s.calls[req.Call] = cancel
	if moveMethods[method] {
		s.moving[req.Call] = req.ID
	}
	s.mu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer func() {
			s.mu.Lock()
			delete(s.calls, req.Call)
			delete(s.moving, req.Call)
			s.mu.Unlock()
			cancel()
		}()
		subject := replySubject(s.cfg.ID, req.Call)
		progress := func(step string) {
			b, _ := json.Marshal(callFrame{Step: step})
			s.cfg.Conn.Publish(subject, b)
		}
		start := time.Now()
		res, err := s.run(ctx, method, req, progress)
		f := callFrame{Done: true, Error: toWire(err)}
		if err == nil && res != nil {
			f.Result, err = json.Marshal(res)
			if err != nil {
				f.Error = toWire(err)
			}
		}
		b, _ := json.Marshal(f)
		if err := s.cfg.Conn.Publish(subject, b); err != nil {
			s.log.Warn("publish reply", "method", method, "err", err)
		}
		s.log.Debug("engine call", "method", method, "vm_id", req.ID, "ms", time.Since(start).Milliseconds(), "err", err)
	}()
}

// run performs one call; the result is JSON-encoded as the reply.
func (s *server) run(ctx context.Context, method string, req callRequest, progress engine.Progress) (any, error) {
	e := s.cfg.Engine
	need := func(v any) error {
		if v == nil {
			return errs.New(errs.InvalidArgument, "%s: missing argument", method)
		}
		return nil
	}
	switch method {
	case mCreate:
		if req.Create == nil {
			return nil, need(nil)
		}
		return e.Create(ctx, *req.Create, progress)
	case mStart:
		return e.Start(ctx, req.ID, progress)
	case mStop:
		return e.Stop(ctx, req.ID)
	case mRestart:
		return e.Restart(ctx, req.ID, progress)
	case mDestroy:
		return nil, e.Destroy(ctx, req.ID)
	case mRename:
		return e.Rename(ctx, req.ID, req.Name)
	case mResize:
		if req.Resize == nil {
			return nil, need(nil)
		}
		return e.Resize(ctx, req.ID, *req.Resize)
	case mSnapshot:
		if req.SnapshotSpec == nil {
			return nil, need(nil)
		}
		return e.Snapshot(ctx, req.ID, *req.SnapshotSpec, progress)
	case mSnapshots:
		return e.Snapshots(ctx, req.ID)
	case mRestoreSnapshot:
		return e.RestoreSnapshot(ctx, req.ID, req.Snapshot, progress)
	case mDeleteSnapshot:
		return nil, e.DeleteSnapshot(ctx, req.ID, req.Snapshot)
	case mGet:
		return e.Get(ctx, req.ID)
	case mList:
		return e.List(ctx)
	case mReconcile:
		return nil, e.Reconcile(ctx)
	case mReattachPorts:
		return nil, e.ReattachPorts(ctx)
	case mCapacity:
		return e.Capacity(ctx)
	case mConsoleLog:
		return e.ConsoleLog(ctx, req.ID)
	case mAgentKey:
		k, ok := e.(AgentKeyer)
		if !ok {
			return nil, errs.New(errs.FailedPrecondition, "this node's engine does not pin agent keys")
		}
		return k.AgentKey(ctx, req.ID)
	case mDialAgent:
		return nil, s.dialAgent(ctx, req)
	case mAgentPubKey:
		return s.agentPubKey()
	case mAgentSign:
		return s.agentSign(req)
	case mConsole:
		return nil, s.console(ctx, req)
	case mDirectTicket:
		if s.cfg.Direct == nil {
			return nil, errs.New(errs.FailedPrecondition, "node %s has no direct listener", s.cfg.ID)
		}
		switch {
		case req.Kind == kindAgent && vmIDRE().MatchString(req.ID), req.Kind == kindTunnel && req.ID == "",
			req.Kind == kindDisk && tokenRE().MatchString(req.ID),
			req.Kind == kindPeerDisk && tokenRE().MatchString(req.ID) && fingerprintRE().MatchString(req.Peer):
		default:
			return nil, errs.New(errs.InvalidArgument, "direct ticket: bad kind %q or vm %q", req.Kind, req.ID)
		}
		return s.cfg.Direct.issueFor(req.Kind, req.ID, req.Peer)
	case mDirectCert:
		if s.cfg.Direct == nil {
			return nil, errs.New(errs.FailedPrecondition, "node %s has no direct listener", s.cfg.ID)
		}
		return ticketReply{Addr: s.cfg.Direct.addr, Cert: s.cfg.Direct.fp}, nil
	case mExportDisk:
		if req.To != nil {
			f, err := s.exportDiskFunc()
			return s.exportToPeer(ctx, req, f, err) // transfer_peer.go
		}
		return nil, s.exportDisk(ctx, req)
	case mImportDisk:
		return s.importDisk(ctx, req, progress)
	case mSuspend, mResume, mExportBundle, mImportBundle, mAgentTrustKey, mPrepareImage:
		return s.runMemory(ctx, method, req, progress)
	case mExportPreCopy, mImportPreCopy, mDropPreCopy:
		return s.runPreCopy(ctx, method, req, progress) // transfer_memory_precopy.go
	case mLiveDescribe, mLivePrepare, mLiveDial, mLiveMigrate, mLiveFinish, mLiveAbort, mLiveResume:
		return s.runLive(ctx, method, req, progress)
	case mFork:
		f, ok := e.(engine.Forker)
		if !ok {
			return nil, errs.New(errs.FailedPrecondition, "node %s cannot fork vms", s.cfg.ID)
		}
		if req.ForkSpec == nil {
			return nil, need(nil)
		}
		return f.Fork(ctx, req.ID, *req.ForkSpec, progress)
	case mTemplates, mWarmTemplate:
		k, ok := e.(engine.TemplateKeeper)
		if !ok {
			return nil, errs.New(errs.FailedPrecondition, "node %s keeps no warm templates", s.cfg.ID)
		}
		if method == mTemplates {
			return k.Templates(ctx)
		}
		if req.Warm == nil {
			return nil, need(nil)
		}
		return k.WarmTemplate(ctx, req.Warm.Image, req.Warm.CPUs, req.Warm.MemoryMiB, req.Warm.DiskGiB, progress)
	}
	return nil, errs.New(errs.InvalidArgument, "unknown engine method %q", method)
}

// dialAgent connects to the agent and splices it to a new stream.
func (s *server) dialAgent(ctx context.Context, req callRequest) error {
	if !tokenRE().MatchString(req.Stream) {
		return errs.New(errs.InvalidArgument, "dial agent: bad stream id")
	}
	c, err := s.cfg.Engine.DialAgent(ctx, req.ID)
	if err != nil {
		return err
	}
	st, err := newStream(s.cfg.Conn, streamIn(s.cfg.ID, req.Stream), streamOut(s.cfg.ID, req.Stream), "node:"+req.ID, "control")
	if err != nil {
		c.Close()
		return err
	}
	s.mu.Lock()
	s.streams[st] = true
	s.mu.Unlock()
	var once sync.Once
	end := func() {
		once.Do(func() {
			st.Close()
			c.Close()
			s.mu.Lock()
			delete(s.streams, st)
			s.mu.Unlock()
		})
	}
	go func() { io.Copy(st, c); end() }()
	go func() { io.Copy(c, st); end() }()
	// The subscription must be in place before the caller hears "ok" and
	// starts writing: the reply is published after a flush.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.cfg.Conn.Flush(fctx); err != nil {
		end()
		return errs.New(errs.Unavailable, "dial agent: %w", err)
	}
	return nil
}
