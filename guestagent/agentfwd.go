package guestagent

import (
	"errors"
	"net"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
)

// SSH agent forwarding (OpenSSH's PROTOCOL, `ssh -A`): an
// "auth-agent-req@openssh.com" request on a session channel, before shell
// or exec, makes the agent create a unix socket for the session's user and
// set SSH_AUTH_SOCK to it. Each connection to the socket comes back to the
// host as an "auth-agent@openssh.com" channel.
//
// The request's payload may carry one SSH string, a route token: the agent
// then puts the same string in the extra data of every channel it opens for
// this session, so that a host serving several users' sessions over one
// connection knows whose agent each channel is for. Without payload
// (OpenSSH's form) the channels carry no extra data.

// Request and channel names of agent forwarding.
const (
	reqAuthAgent  = "auth-agent-req@openssh.com"
	chanAuthAgent = "auth-agent@openssh.com"
)

// agentSocket is a session's forwarded-agent socket.
type agentSocket struct {
	dir  string
	path string
	ln   net.Listener
}

// startAgentForwarding creates the session's agent socket: a fresh
// directory minions-agent-* under the guest's /tmp, mode 0700, holding
// agent.sock, mode 0600, both owned by user u (when the agent runs as
// root). Connections to it are relayed over conn.
func startAgentForwarding(conn ssh.Conn, tmp string, u User, token []byte) (*agentSocket, error) {
	if err := os.MkdirAll(tmp, 0o1777); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(tmp, "minions-agent-")
	if err != nil {
		return nil, err
	}
	a := &agentSocket{dir: dir, path: filepath.Join(dir, "agent.sock")}
	ln, err := net.Listen("unix", a.path)
	if err == nil {
		a.ln = ln
		err = os.Chmod(a.path, 0o600)
	}
	if err == nil && os.Geteuid() == 0 {
		if err = os.Chown(a.path, int(u.UID), int(u.GID)); err == nil {
			err = os.Chown(dir, int(u.UID), int(u.GID))
		}
	}
	if err != nil {
		a.close()
		return nil, err
	}
	var extra []byte
	if token != nil {
		extra = ssh.Marshal(struct{ Token string }{string(token)})
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				ch, reqs, err := conn.OpenChannel(chanAuthAgent, extra)
				if err != nil {
					c.Close()
					return
				}
				go ssh.DiscardRequests(reqs)
				splice(ch, c)
			}()
		}
	}()
	return a, nil
}

// parseAgentReq returns the route token of an auth-agent-req payload (nil
// for OpenSSH's empty payload).
func parseAgentReq(payload []byte) ([]byte, error) {
	if len(payload) == 0 {
		return nil, nil
	}
	var p struct{ Token string }
	if err := ssh.Unmarshal(payload, &p); err != nil || p.Token == "" {
		return nil, errors.New("bad auth-agent-req payload")
	}
	return []byte(p.Token), nil
}

// close removes the socket and its directory; open relayed connections
// end with the session's SSH connection or their peer.
func (a *agentSocket) close() {
	if a.ln != nil {
		a.ln.Close()
	}
	os.RemoveAll(a.dir)
}
