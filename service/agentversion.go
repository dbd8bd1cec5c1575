package service

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/minionsdev/minions/guestagent/proto"
)

// hostAgent is the version of the guest agent binary this host gives VMs
// when they boot: set, or found on first use by a function (it runs the
// binary, which most commands never need).
type hostAgent struct {
	mu   sync.Mutex
	v    string
	find func() string
}

// SetHostAgentVersion records the version of the host's guest agent
// binary (what `minions-agent --version` prints). Empty or "unknown..."
// turns the outdated check off.
func (s *Service) SetHostAgentVersion(v string) {
	s.hostAgent.mu.Lock()
	defer s.hostAgent.mu.Unlock()
	s.hostAgent.v, s.hostAgent.find = v, nil
}

// SetHostAgentVersionFunc is SetHostAgentVersion with the version found
// by find when it is first needed (at most once), not now.
func (s *Service) SetHostAgentVersionFunc(find func() string) {
	s.hostAgent.mu.Lock()
	defer s.hostAgent.mu.Unlock()
	s.hostAgent.v, s.hostAgent.find = "", find
}

func (s *Service) hostAgentVersion() string {
	s.hostAgent.mu.Lock()
	defer s.hostAgent.mu.Unlock()
	if f := s.hostAgent.find; f != nil {
		s.hostAgent.v, s.hostAgent.find = f(), nil
	}
	return s.hostAgent.v
}

// AgentStatus asks VM name's agent for its status (the caller must own
// the VM, as for Agent). When the agent's version differs from the host's
// agent binary (the VM booted before an upgrade) the status says so in
// AgentOutdated and AgentWarning: the old agent keeps working and the VM
// gets the host's agent on its next restart.
func (s *Service) AgentStatus(ctx context.Context, c Caller, name string) (proto.Status, error) {
	cl, err := s.agentClient(ctx, c, name)
	if err != nil {
		return proto.Status{}, err
	}
	defer cl.Close()
	st, err := cl.Status(ctx)
	if err != nil {
		return proto.Status{}, err
	}
	st.AgentOutdated, st.AgentWarning = false, ""
	if w := agentWarning(st.AgentVersion, s.hostAgentVersion()); w != "" {
		st.AgentOutdated, st.AgentWarning = true, w
		s.log.Warn("vm runs an older guest agent", "vm", name, "agent", st.AgentVersion, "host_agent", s.hostAgentVersion())
	}
	return st, nil
}

// agentWarning says why guest agent version guest is outdated against the
// host's agent version host, or "" when it is not (or host is unknown).
func agentWarning(guest, host string) string {
	if host == "" || strings.HasPrefix(host, "unknown") || guest == host {
		return ""
	}
	return fmt.Sprintf("agent %s is older than the host's %s; it is upgraded on the next restart", guest, host)
}
