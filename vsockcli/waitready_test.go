package vsockcli

import (
	"bufio"
	"context"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// slowRelay plays an agent relay whose guest is still booting: it holds
// the first hold CONNECTs open for wait each and then closes them
// unanswered
// (as the relay does when its SessionWait ends without a guest link). The
// guest is up from the instant the last held CONNECT closes (up); from
// then on each CONNECT is answered and served by a real guest agent.
type slowRelay struct {
	hold int
	wait time.Duration
	srv  *guestagent.Server

	mu       sync.Mutex
	up       time.Time
	connects int
}

func (r *slowRelay) serve(t *testing.T, l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || !strings.HasPrefix(line, "CONNECT ") {
				c.Close()
				return
			}
			r.mu.Lock()
			r.connects++
			n := r.connects
			r.mu.Unlock()
			if n <= r.hold {
				time.Sleep(r.wait)
				if n == r.hold {
					r.mu.Lock()
					r.up = time.Now()
					r.mu.Unlock()
				}
				c.Close()
				return
			}
			if _, err := c.Write([]byte("OK 1\n")); err != nil {
				c.Close()
				return
			}
			r.srv.ServeConn(context.Background(), c)
		}()
	}
}

// TestWaitReadyRetriesAtOnceAfterLongAttempt: an attempt that failed only
// after waiting longer than the retry interval (the relay held the
// CONNECT until its own bound while the guest booted) is retried at once,
// not after a further interval: the wait must not add its interval to a
// guest that came up meanwhile.
func TestWaitReadyRetriesAtOnceAfterLongAttempt(t *testing.T) {
	dir := t.TempDir()
	signer := newSigner(t)
	srv, err := guestagent.NewServer(guestagent.Config{
		AuthorizedKey: signer.PublicKey(),
		HostKeyPath:   filepath.Join(dir, "agent_host_key"),
		Root:          dir,
		Mounts:        func() ([]guestagent.Mount, error) { return nil, nil },
		Power:         func(bool) error { return nil },
		Log:           testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := &slowRelay{hold: 1, wait: 2500 * time.Millisecond, srv: srv}
	go r.serve(t, l)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ep := hypervisor.AgentEndpoint{Kind: KindHybrid, Path: sock, Port: proto.DefaultVsockPort}
	// A long retry interval, so that sleeping it after the held attempts
	// shows far above the handshake's own time on a loaded host.
	cfg := Config{Signer: signer, HostKey: ssh.InsecureIgnoreHostKey(), Retry: 2 * time.Second}
	c, err := WaitReady(ctx, ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r.mu.Lock()
	late := time.Since(r.up)
	connects := r.connects
	r.mu.Unlock()
	if connects != 2 {
		t.Fatalf("%d CONNECTs, want 2 (one held, one answered)", connects)
	}
	if late > time.Second {
		t.Fatalf("WaitReady returned %v after the guest was up: it slept its retry interval (2s) after an attempt that had already waited 2.5s", late.Round(time.Millisecond))
	}
	t.Logf("WaitReady returned %v after the guest was up", late.Round(time.Millisecond))
}

// TestWaitReadyPausesAfterQuickFailure: a socket that is not there yet
// is retried after the retry interval, not in a busy loop.
func TestWaitReadyPausesAfterQuickFailure(t *testing.T) {
	dir := t.TempDir()
	signer := newSigner(t)
	ep := hypervisor.AgentEndpoint{Kind: KindHybrid, Path: filepath.Join(dir, "absent.sock"), Port: proto.DefaultVsockPort}
	var mu sync.Mutex
	retries := 0
	cfg := Config{Signer: signer, HostKey: ssh.InsecureIgnoreHostKey(), Retry: 100 * time.Millisecond,
		Observe: func(phase string, _ time.Duration) {
			if phase == "retry" {
				mu.Lock()
				retries++
				mu.Unlock()
			}
		}}
	ctx, cancel := context.WithTimeout(context.Background(), 550*time.Millisecond)
	defer cancel()
	if _, err := WaitReady(ctx, ep, cfg); err == nil {
		t.Fatal("WaitReady of an absent socket: no error")
	}
	mu.Lock()
	defer mu.Unlock()
	if retries < 2 || retries > 6 {
		t.Fatalf("%d retries in 550 ms at a 100 ms interval, want about 5", retries)
	}
}
