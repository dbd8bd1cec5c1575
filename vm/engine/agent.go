package engine

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
	"golang.org/x/crypto/ssh"
)

// agentConfig returns the client config for v's agent. With pin empty the
// agent's key is accepted and reported through *learned (first contact);
// otherwise it must match.
func (l *Local) agentConfig(pin string, learned *string) vsockcli.Config {
	return vsockcli.Config{
		Signer: l.HostKey,
		User:   "root",
		HostKey: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			got := string(bytes.TrimSpace(ssh.MarshalAuthorizedKey(key)))
			if pin == "" {
				if learned != nil {
					*learned = got
				}
				return nil
			}
			if got != pin {
				return errs.New(errs.PermissionDenied, "guest agent presented key %s, not the pinned one", ssh.FingerprintSHA256(key))
			}
			return nil
		},
	}
}

// Agent implements Engine: the client is lent from the pool of one
// connection per running instance (see agentPool); its Close returns it.
func (l *Local) Agent(ctx context.Context, id string) (*vsockcli.Client, error) {
	v, err := l.load(ctx, id)
	if err != nil {
		return nil, err
	}
	return l.pooledAgent(ctx, v)
}

// pooledAgent lends v's pooled agent client (Close returns it).
func (l *Local) pooledAgent(ctx context.Context, v store.VM) (*vsockcli.Client, error) {
	h, err := l.runningHandle(v)
	if err != nil {
		return nil, err
	}
	cl, err := l.agents.lease(ctx, v.ID, h, l.agentConfig(v.AgentKey, nil))
	if err != nil {
		return nil, errs.New(errs.Unavailable, "connect to the agent of vm %s: %w", v.Name, err)
	}
	return cl, nil
}

// DialAgent implements Engine.
func (l *Local) DialAgent(ctx context.Context, id string) (net.Conn, error) {
	v, err := l.load(ctx, id)
	if err != nil {
		return nil, err
	}
	h, err := l.runningHandle(v)
	if err != nil {
		return nil, err
	}
	c, err := vsockcli.DialStream(ctx, h.Agent)
	if err != nil {
		return nil, errs.New(errs.Unavailable, "connect to the agent of vm %s: %w", v.Name, err)
	}
	return c, nil
}

// runningHandle is the handle of v's live hypervisor.
func (l *Local) runningHandle(v store.VM) (*hypervisor.Handle, error) {
	if err := vm.Allowed(v.Name, v.State, vm.OpExec); err != nil {
		return nil, err
	}
	h, err := DecodeHandle(v.Handle)
	if err != nil || h == nil {
		return nil, errs.New(errs.FailedPrecondition, "vm %s has no running hypervisor", v.Name)
	}
	if !l.Driver.Alive(h) {
		return nil, errs.New(errs.FailedPrecondition, "vm %s is not running (its hypervisor exited)", v.Name)
	}
	return h, nil
}

func (l *Local) agentOf(ctx context.Context, v store.VM) (*vsockcli.Client, error) {
	h, err := l.runningHandle(v)
	if err != nil {
		return nil, err
	}
	cl, err := vsockcli.Dial(ctx, h.Agent, l.agentConfig(v.AgentKey, nil))
	if err != nil {
		return nil, errs.New(errs.Unavailable, "connect to the agent of vm %s: %w", v.Name, err)
	}
	return cl, nil
}

// consoleTail returns the last n lines of a VM's console log, reading at
// most its last 64 KiB ("" when it is empty or unreadable).
func (l *Local) consoleTail(id string, n int) string {
	tail, _ := l.readConsoleTail(id, n)
	return tail
}

// readConsoleTail is consoleTail that reports why the log (written by
// the hypervisor driver's console logger) could not be read.
func (l *Local) readConsoleTail(id string, n int) (string, error) {
	b, err := consolelog.Tail(l.consolePath(id), 64<<10)
	if err != nil || len(b) == 0 {
		return "", err
	}
	lines := strings.Split(strings.TrimRight(string(bytes.ToValidUTF8(b, nil)), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n"), nil
}

// notReady builds the error for a VM whose agent did not answer in time,
// with the end of its console (or why it cannot be shown).
func (l *Local) notReady(name, id string, err error) error {
	tail, terr := l.readConsoleTail(id, 15)
	switch {
	case terr != nil:
		tail = fmt.Sprintf("(the console log %s cannot be read: %v)", l.consolePath(id), terr)
	case tail == "":
		tail = "(the console is empty)"
	}
	return errs.New(errs.Unavailable, "vm %s did not become ready within %s: %v\nlast console lines:\n%s", name, l.cfg.ReadyTimeout, err, tail)
}
