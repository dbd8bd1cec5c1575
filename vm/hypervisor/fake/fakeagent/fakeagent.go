// Package fakeagent gives the fake hypervisor a real, in-process guest
// agent, for host-side tests: its VMs answer like real ones.
package fakeagent

import (
	"bufio"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/minionsdev/minions/guestagent"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

// ServeAgent listens on the unix socket sock as a hypervisor's hybrid
// vsock does ("CONNECT <port>\n", answered "OK <n>\n") and serves each
// connection with the in-process guest agent srv, so a fake hypervisor's
// VMs answer like real ones. onAccept, if set, is called for each
// connection. Closing the listener stops it; connections being served
// run on.
func ServeAgent(sock string, srv *guestagent.Server, onAccept func()) (net.Listener, error) {
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if onAccept != nil {
				onAccept()
			}
			go func() {
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil || !strings.HasPrefix(line, "CONNECT ") || br.Buffered() > 0 {
					c.Close()
					return
				}
				io.WriteString(c, "OK 1\n")
				srv.ServeConn(context.Background(), c)
			}()
		}
	}()
	return ln, nil
}

// AgentDriver is the fake hypervisor with a real guest agent: every VM it
// starts or restores gets srv on a hybrid-vsock socket in its run dir
// (ServeAgent), gone when the VM is shut down, killed or crashed.
type AgentDriver struct {
	*fake.Driver
	srv *guestagent.Server

	mu      sync.Mutex
	lns     map[int]net.Listener
	handles map[string]*hypervisor.Handle // by VM ID
	accepts int                           // agent connections accepted
}

// NewAgentDriver wraps drv so its VMs answer with srv.
func NewAgentDriver(drv *fake.Driver, srv *guestagent.Server) *AgentDriver {
	return &AgentDriver{Driver: drv, srv: srv, lns: map[int]net.Listener{}, handles: map[string]*hypervisor.Handle{}}
}

// Server is the guest agent the VMs answer with.
func (d *AgentDriver) Server() *guestagent.Server {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.srv
}

// SetServer makes the VMs started from now on answer with srv: a test
// whose hosts share srv models one guest moving between them.
func (d *AgentDriver) SetServer(srv *guestagent.Server) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.srv = srv
}

// Dials is how many agent connections the VMs accepted so far.
func (d *AgentDriver) Dials() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.accepts
}

func (d *AgentDriver) serve(id string, h *hypervisor.Handle) (*hypervisor.Handle, error) {
	sock := filepath.Join(h.RunDir, "agent.sock")
	ln, err := ServeAgent(sock, d.Server(), func() { d.mu.Lock(); d.accepts++; d.mu.Unlock() })
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.lns[h.PID], d.handles[id] = ln, h
	d.mu.Unlock()
	h.Agent = hypervisor.AgentEndpoint{Kind: "hybrid-vsock", Path: sock, Port: 1024}
	return h, nil
}

func (d *AgentDriver) unserve(h *hypervisor.Handle) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if h != nil && d.lns[h.PID] != nil {
		d.lns[h.PID].Close()
		delete(d.lns, h.PID)
	}
}

// Start implements hypervisor.Driver.
func (d *AgentDriver) Start(ctx context.Context, spec hypervisor.Spec) (*hypervisor.Handle, error) {
	h, err := d.Driver.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	return d.serve(spec.ID, h)
}

// Restore implements hypervisor.Driver.
func (d *AgentDriver) Restore(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	h, err := d.Driver.Restore(ctx, spec, dir)
	if err != nil {
		return nil, err
	}
	return d.serve(spec.ID, h)
}

// RestoreCopy implements hypervisor.Forker: a copy restored from dir
// answers with srv too.
func (d *AgentDriver) RestoreCopy(ctx context.Context, spec hypervisor.Spec, dir string) (*hypervisor.Handle, error) {
	h, err := d.Driver.RestoreCopy(ctx, spec, dir)
	if err != nil {
		return nil, err
	}
	return d.serve(spec.ID, h)
}

// Shutdown implements hypervisor.Driver.
func (d *AgentDriver) Shutdown(ctx context.Context, h *hypervisor.Handle, timeout time.Duration) error {
	d.unserve(h)
	return d.Driver.Shutdown(ctx, h, timeout)
}

// Kill implements hypervisor.Driver.
func (d *AgentDriver) Kill(ctx context.Context, h *hypervisor.Handle) error {
	d.unserve(h)
	return d.Driver.Kill(ctx, h)
}

// Crash makes VM id's fake hypervisor process die behind the engine's
// back (its agent with it).
func (d *AgentDriver) Crash(id string) {
	d.mu.Lock()
	h := d.handles[id]
	d.mu.Unlock()
	d.unserve(h)
	d.Driver.Crash(h)
}
