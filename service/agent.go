package service

import (
	"bytes"
	"context"
	"encoding/json"
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

func decodeHandle(s string) (*hypervisor.Handle, error) {
	if s == "" {
		return nil, nil
	}
	var h hypervisor.Handle
	if err := json.Unmarshal([]byte(s), &h); err != nil {
		return nil, err
	}
	return &h, nil
}

func encodeHandle(h *hypervisor.Handle) string {
	if h == nil {
		return ""
	}
	b, _ := json.Marshal(h)
	return string(b)
}

// agentConfig returns the client config for v's agent. With pin empty the
// agent's key is accepted and reported through *learned (first contact);
// otherwise it must match.
func (s *Service) agentConfig(pin string, learned *string) vsockcli.Config {
	return vsockcli.Config{
		Signer: s.HostKey,
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

// Agent connects to the guest agent of a running VM the caller may use.
// The caller closes the client.
func (s *Service) Agent(ctx context.Context, c Caller, name string) (*vsockcli.Client, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return nil, err
	}
	return s.agentOf(ctx, v)
}

func (s *Service) agentOf(ctx context.Context, v store.VM) (*vsockcli.Client, error) {
	if err := vm.Allowed(v.Name, v.State, vm.OpExec); err != nil {
		return nil, err
	}
	h, err := decodeHandle(v.Handle)
	if err != nil || h == nil {
		return nil, errs.New(errs.FailedPrecondition, "vm %s has no running hypervisor", v.Name)
	}
	if !s.Driver.Alive(h) {
		return nil, errs.New(errs.FailedPrecondition, "vm %s is not running (its hypervisor exited)", v.Name)
	}
	cl, err := vsockcli.Dial(ctx, h.Agent, s.agentConfig(v.AgentKey, nil))
	if err != nil {
		return nil, errs.New(errs.Unavailable, "connect to the agent of vm %s: %w", v.Name, err)
	}
	return cl, nil
}

// consoleTail returns the last n lines of a VM's console log, reading at
// most its last 64 KiB ("" when it is empty or unreadable).
func (s *Service) consoleTail(id string, n int) string {
	tail, _ := s.readConsoleTail(id, n)
	return tail
}

// readConsoleTail is consoleTail that reports why the log (written by
// the hypervisor driver's console logger) could not be read.
func (s *Service) readConsoleTail(id string, n int) (string, error) {
	b, err := consolelog.Tail(s.consolePath(id), 64<<10)
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
func (s *Service) notReady(name, id string, err error) error {
	tail, terr := s.readConsoleTail(id, 15)
	switch {
	case terr != nil:
		tail = fmt.Sprintf("(the console log %s cannot be read: %v)", s.consolePath(id), terr)
	case tail == "":
		tail = "(the console is empty)"
	}
	return errs.New(errs.Unavailable, "vm %s did not become ready within %s: %v\nlast console lines:\n%s", name, s.cfg.ReadyTimeout, err, tail)
}
