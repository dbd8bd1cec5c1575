// Package agenttest is an in-process stand-in for the guest agent, for the
// gateway's tests and benchmarks: an SSH server (golang.org/x/crypto/ssh)
// that accepts one client key and serves session channels (env, pty-req,
// window-change, shell, exec, signal, the sftp subsystem, exit-status and
// exit-signal) and direct-tcpip channels, running real processes on this
// host in a directory that plays the guest's filesystem.
package agenttest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"
)

// Agent is a running fake agent.
type Agent struct {
	Root string // working directory of commands and of sftp
	ln   net.Listener
	cfg  *gossh.ServerConfig
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Start serves on ln. Only clientKey may log in. Stop with Close.
func Start(ln net.Listener, clientKey gossh.PublicKey, root string) (*Agent, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	hostKey, err := gossh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	want := string(clientKey.Marshal())
	cfg := &gossh.ServerConfig{
		PublicKeyCallback: func(_ gossh.ConnMetadata, k gossh.PublicKey) (*gossh.Permissions, error) {
			if string(k.Marshal()) != want {
				return nil, errors.New("unknown key")
			}
			return &gossh.Permissions{}, nil
		},
	}
	cfg.AddHostKey(hostKey)
	a := &Agent{Root: root, ln: ln, cfg: cfg, conns: map[net.Conn]struct{}{}}
	a.wg.Add(1)
	go a.accept()
	return a, nil
}

// Close stops accepting and cuts every connection.
func (a *Agent) Close() error {
	err := a.ln.Close()
	a.mu.Lock()
	for c := range a.conns {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
	return err
}

func (a *Agent) accept() {
	defer a.wg.Done()
	for {
		c, err := a.ln.Accept()
		if err != nil {
			return
		}
		a.mu.Lock()
		a.conns[c] = struct{}{}
		a.mu.Unlock()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer func() {
				a.mu.Lock()
				delete(a.conns, c)
				a.mu.Unlock()
				c.Close()
			}()
			a.serve(c)
		}()
	}
}

func (a *Agent) serve(c net.Conn) {
	sc, chans, reqs, err := gossh.NewServerConn(c, a.cfg)
	if err != nil {
		return
	}
	defer sc.Close()
	go gossh.DiscardRequests(reqs)
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			go a.session(nc)
		case "direct-tcpip":
			go directTCPIP(nc)
		default:
			_ = nc.Reject(gossh.UnknownChannelType, "unsupported channel type")
		}
	}
}

func directTCPIP(nc gossh.NewChannel) {
	var p struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := gossh.Unmarshal(nc.ExtraData(), &p); err != nil {
		_ = nc.Reject(gossh.ConnectionFailed, "bad payload")
		return
	}
	conn, err := net.Dial("tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))))
	if err != nil {
		_ = nc.Reject(gossh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		conn.Close()
		return
	}
	go gossh.DiscardRequests(reqs)
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(conn, ch)
		_ = conn.(*net.TCPConn).CloseWrite()
		close(done)
	}()
	_, _ = io.Copy(ch, conn)
	_ = ch.CloseWrite()
	<-done
	ch.Close()
	conn.Close()
}

type ptyReq struct {
	Term          string
	Cols, Rows    uint32
	Width, Height uint32
	Modes         string
}

type session struct {
	a    *Agent
	ch   gossh.Channel
	env  []string
	pty  *ptyReq
	mu   sync.Mutex
	tty  *os.File // pty master while the command runs
	proc *os.Process
}

func (a *Agent) session(nc gossh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	s := &session{a: a, ch: ch}
	started := false
	for r := range reqs {
		ok := false
		switch r.Type {
		case "env":
			var kv struct{ Name, Value string }
			if gossh.Unmarshal(r.Payload, &kv) == nil {
				s.env = append(s.env, kv.Name+"="+kv.Value)
				ok = true
			}
		case "pty-req":
			var p ptyReq
			if gossh.Unmarshal(r.Payload, &p) == nil && !started {
				s.pty = &p
				ok = true
			}
		case "window-change":
			var w struct{ Cols, Rows, Width, Height uint32 }
			if gossh.Unmarshal(r.Payload, &w) == nil && s.pty != nil {
				s.pty.Cols, s.pty.Rows = w.Cols, w.Rows
				s.mu.Lock()
				if s.tty != nil {
					_ = pty.Setsize(s.tty, &pty.Winsize{Rows: uint16(w.Rows), Cols: uint16(w.Cols)})
				}
				s.mu.Unlock()
				ok = true
			}
		case "signal":
			var sig struct{ Name string }
			if gossh.Unmarshal(r.Payload, &sig) == nil {
				s.signal(sig.Name)
				ok = true
			}
		case "shell", "exec":
			if started {
				break
			}
			var cmd struct{ Command string }
			if r.Type == "exec" && gossh.Unmarshal(r.Payload, &cmd) != nil {
				break
			}
			// Reply before starting: a quick command could otherwise
			// exit and close the channel before the reply is sent.
			started = true
			if r.WantReply {
				_ = r.Reply(true, nil)
			}
			if err := s.start(cmd.Command); err != nil {
				fmt.Fprintf(ch.Stderr(), "agent: %v\n", err)
				s.exit(127, "")
			}
			continue
		case "subsystem":
			var sub struct{ Name string }
			if started || gossh.Unmarshal(r.Payload, &sub) != nil || sub.Name != "sftp" {
				break
			}
			started, ok = true, true
			go s.sftp()
		}
		if r.WantReply {
			_ = r.Reply(ok, nil)
		}
	}
	s.signal("HUP")
}

func (s *session) signal(name string) {
	sigs := map[string]syscall.Signal{"HUP": syscall.SIGHUP, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL, "TERM": syscall.SIGTERM, "USR1": syscall.SIGUSR1}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sig, ok := sigs[name]; ok && s.proc != nil {
		_ = s.proc.Signal(sig)
	}
}

func (s *session) sftp() {
	// The sftp server closes its stream when done; keep the channel open
	// for the exit status.
	srv, err := sftp.NewServer(keepOpen{s.ch}, sftp.WithServerWorkingDirectory(s.a.Root))
	if err == nil {
		_ = srv.Serve()
		srv.Close()
	}
	s.exit(0, "")
}

type keepOpen struct{ gossh.Channel }

func (keepOpen) Close() error { return nil }

func (s *session) start(command string) error {
	args := []string{"-l"}
	if command != "" {
		args = []string{"-c", command}
	}
	cmd := exec.Command("/bin/sh", args...)
	cmd.Dir = s.a.Root
	cmd.Env = append([]string{"HOME=" + s.a.Root, "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}, s.env...)
	if s.pty != nil {
		cmd.Env = append(cmd.Env, "TERM="+s.pty.Term)
		tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: uint16(s.pty.Rows), Cols: uint16(s.pty.Cols)})
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.tty = tty
		s.mu.Unlock()
		s.setProc(cmd.Process)
		go func() { _, _ = io.Copy(tty, s.ch) }()
		go func() {
			_, _ = io.Copy(s.ch, tty) // ends with EIO once the child is gone
			s.wait(cmd)
			s.mu.Lock()
			tty.Close()
			s.tty = nil
			s.mu.Unlock()
		}()
		return nil
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	s.setProc(cmd.Process)
	go func() { _, _ = io.Copy(stdin, s.ch); stdin.Close() }()
	go func() {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); _, _ = io.Copy(s.ch, stdout) }()
		go func() { defer wg.Done(); _, _ = io.Copy(s.ch.Stderr(), stderr) }()
		wg.Wait()
		s.wait(cmd)
	}()
	return nil
}

func (s *session) setProc(p *os.Process) {
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
}

func (s *session) wait(cmd *exec.Cmd) {
	_ = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		s.exit(-1, unixSignalName(ws.Signal()))
		return
	}
	s.exit(cmd.ProcessState.ExitCode(), "")
}

func (s *session) exit(code int, signal string) {
	_ = s.ch.CloseWrite()
	if signal != "" {
		_, _ = s.ch.SendRequest("exit-signal", false, gossh.Marshal(struct {
			Signal     string
			CoreDumped bool
			Msg, Lang  string
		}{Signal: signal}))
	} else {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(code))
		_, _ = s.ch.SendRequest("exit-status", false, b[:])
	}
	_ = s.ch.Close()
}

func unixSignalName(sig syscall.Signal) string {
	switch sig {
	case syscall.SIGHUP:
		return "HUP"
	case syscall.SIGINT:
		return "INT"
	case syscall.SIGKILL:
		return "KILL"
	case syscall.SIGTERM:
		return "TERM"
	case syscall.SIGUSR1:
		return "USR1"
	}
	return "USR2"
}
