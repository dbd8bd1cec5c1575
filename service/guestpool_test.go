package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	agent "github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vsockcli"
)

// poolSource is a VM table in memory whose agent is the real guest agent
// server, reached over a unix socket with the real vsockcli client.
type poolSource struct {
	t    *testing.T
	sock string
	cfg  vsockcli.Config

	mu     sync.Mutex
	vm     VM
	getErr error
	dials  int
	conns  []net.Conn // agent side of every connection
}

func newPoolSource(t *testing.T) *poolSource {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "guest")
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644)
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := agent.NewServer(agent.Config{
		AuthorizedKey: signer.PublicKey(),
		HostKeyPath:   filepath.Join(root, "etc/minions/agent_host_key"),
		Root:          root,
		Mounts:        func() ([]agent.Mount, error) { return nil, nil },
		GrowMount:     root,
		SetHostname:   func(string) error { return nil },
		SetTime:       func(time.Time) error { return nil },
		Power:         func(bool) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	src := &poolSource{t: t, sock: filepath.Join(dir, "agent.sock"),
		cfg: vsockcli.Config{Signer: signer, HostKey: gossh.InsecureIgnoreHostKey()},
		vm:  VM{ID: "0123456789ab", Name: "web", Status: store.StateRunning, PID: 100, StartedAt: time.Unix(1000, 0)}}
	ln, err := net.Listen("unix", src.sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			src.mu.Lock()
			src.conns = append(src.conns, c)
			src.mu.Unlock()
			go srv.ServeConn(ctx, c)
		}
	}()
	return src
}

func (s *poolSource) Get(_ context.Context, _ Caller, name string) (VM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.getErr != nil {
		return VM{}, s.getErr
	}
	if name != s.vm.Name {
		return VM{}, errs.New(errs.NotFound, "no vm named %q", name)
	}
	return s.vm, nil
}

func (s *poolSource) Agent(ctx context.Context, c Caller, name string) (*vsockcli.Client, error) {
	v, err := s.Get(ctx, c, name)
	if err != nil {
		return nil, err
	}
	if v.Status != store.StateRunning {
		return nil, errs.New(errs.FailedPrecondition, "vm %s is %s", name, v.Status)
	}
	s.mu.Lock()
	s.dials++
	s.mu.Unlock()
	conn, err := net.Dial("unix", s.sock)
	if err != nil {
		return nil, err
	}
	return vsockcli.NewClient(ctx, conn, s.cfg)
}

func (s *poolSource) set(f func(*poolSource)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func (s *poolSource) dialCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dials
}

// killAgents closes the agent side of every connection (the VM died).
func (s *poolSource) killAgents() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

func ping(t *testing.T, c *gossh.Client) {
	t.Helper()
	ok, _, err := c.SendRequest("ping@minions", true, []byte("{}"))
	if err != nil || !ok {
		t.Fatalf("ping through the pooled client: %v %v", ok, err)
	}
}

func closedSoon(c *gossh.Client) bool {
	done := make(chan struct{})
	go func() { c.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(5 * time.Second):
		return false
	}
}

func newTestPool(src *poolSource, idle time.Duration) *GuestPool {
	return newGuestPool(src, idle, slog.New(slog.DiscardHandler))
}

var anyCaller = Caller{Name: "alice"}

func TestAgentPoolReusesOneConnection(t *testing.T) {
	src := newPoolSource(t)
	p := newTestPool(src, time.Hour)
	defer p.Close()
	ctx := context.Background()
	a, relA, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	b, relB, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	if a != b || src.dialCount() != 1 {
		t.Fatalf("two gets: same client %v, dials %d; want one shared connection", a == b, src.dialCount())
	}
	ping(t, a)
	relA()
	ping(t, b)
	relB()
	c, relC, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	defer relC()
	if c != a || src.dialCount() != 1 {
		t.Fatalf("get after release: same client %v, dials %d", c == a, src.dialCount())
	}
}

func TestAgentPoolReleaseIsIdempotent(t *testing.T) {
	src := newPoolSource(t)
	p := newTestPool(src, 10*time.Millisecond)
	defer p.Close()
	ctx := context.Background()
	_, relA, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	b, relB, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	defer relB()
	relA()
	relA() // must not drop b's reference
	// Longer than the idle time: b's holder still has it open.
	time.Sleep(100 * time.Millisecond)
	ping(t, b)
}

func TestAgentPoolErrors(t *testing.T) {
	src := newPoolSource(t)
	p := newTestPool(src, time.Hour)
	defer p.Close()
	ctx := context.Background()
	_, rel, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	defer rel()
	for _, tc := range []struct {
		name  string
		set   func(*poolSource)
		vm    string
		class *errs.Class
	}{
		{"unknown vm", func(*poolSource) {}, "ghost", errs.NotFound},
		// Authorisation is asked on every use, pooled or not.
		{"caller lost access", func(s *poolSource) { s.getErr = errs.New(errs.NotFound, "no vm named \"web\"") }, "web", errs.NotFound},
		{"stopped", func(s *poolSource) { s.vm.Status = store.StateStopped; s.vm.PID = 0 }, "web", errs.FailedPrecondition},
	} {
		t.Run(tc.name, func(t *testing.T) {
			saved := src.vm
			src.set(tc.set)
			defer src.set(func(s *poolSource) { s.vm, s.getErr = saved, nil })
			c, rel, err := p.Channels(ctx, anyCaller, tc.vm)
			if !errors.Is(err, tc.class) || c != nil || rel != nil {
				t.Fatalf("get: %v, %v; want a %v error", c, err, tc.class)
			}
			if src.dialCount() != 1 {
				t.Fatalf("dials = %d", src.dialCount())
			}
		})
	}
}

func TestAgentPoolNewProcessNewConnection(t *testing.T) {
	src := newPoolSource(t)
	p := newTestPool(src, 20*time.Millisecond)
	defer p.Close()
	ctx := context.Background()
	old, relOld, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	src.set(func(s *poolSource) { s.vm.PID, s.vm.StartedAt = 200, time.Unix(2000, 0) }) // restarted
	cur, relCur, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	defer relCur()
	if cur == old || src.dialCount() != 2 {
		t.Fatalf("after a restart: reused %v, dials %d", cur == old, src.dialCount())
	}
	ping(t, old) // still usable by its holder
	relOld()
	if !closedSoon(old) {
		t.Fatal("the old process's connection stays open after its last release")
	}
	ping(t, cur)
}

func TestAgentPoolIdleClose(t *testing.T) {
	src := newPoolSource(t)
	p := newTestPool(src, 20*time.Millisecond)
	defer p.Close()
	ctx := context.Background()
	c, rel, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	rel()
	if !closedSoon(c) {
		t.Fatal("idle connection not closed")
	}
	c2, rel2, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	defer rel2()
	ping(t, c2)
	if c2 == c || src.dialCount() != 2 {
		t.Fatalf("after idle close: reused %v, dials %d", c2 == c, src.dialCount())
	}
}

func TestAgentPoolDeadConnection(t *testing.T) {
	src := newPoolSource(t)
	p := newTestPool(src, time.Hour)
	defer p.Close()
	ctx := context.Background()
	c, rel, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	src.killAgents()
	// Whether the pool saw the death (Wait) or finds it by the ping, the
	// next session gets a working connection.
	c2, rel2, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	defer rel2()
	if c2 == c {
		t.Fatal("handed out a dead connection")
	}
	ping(t, c2)
	rel()
}

func TestAgentPoolCloseAll(t *testing.T) {
	src := newPoolSource(t)
	p := newTestPool(src, time.Hour)
	ctx := context.Background()
	busy, relBusy, err := p.Channels(ctx, anyCaller, "web")
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	ping(t, busy) // in use: closed on its last release, not before
	relBusy()
	if !closedSoon(busy) {
		t.Fatal("connection open after closeAll and its release")
	}
	if _, _, err := p.Channels(ctx, anyCaller, "web"); !errors.Is(err, errs.Unavailable) {
		t.Fatalf("get after closeAll: %v", err)
	}
}

func TestAgentPoolConcurrent(t *testing.T) {
	src := newPoolSource(t)
	p := newTestPool(src, time.Millisecond)
	defer p.Close()
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 10; j++ {
				c, rel, err := p.Channels(ctx, anyCaller, "web")
				if err != nil {
					t.Error(err)
					return
				}
				if ok, _, err := c.SendRequest("ping@minions", true, []byte("{}")); err != nil || !ok {
					t.Errorf("ping: %v %v", ok, err)
				}
				rel()
			}
		}()
	}
	wg.Wait()
}
