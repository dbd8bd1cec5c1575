package guestagent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

// drainGrace bounds how long output is forwarded after the command exited
// (background children may hold its stdout open).
const drainGrace = time.Second

// User is a guest account from /etc/passwd.
type User struct {
	Name     string
	UID, GID uint32
	Home     string
	Shell    string
}

// LookupUser finds name in the passwd file at path.
func LookupUser(path, name string) (User, error) {
	f, err := os.Open(path)
	if err != nil {
		return User{}, fmt.Errorf("lookup user %s: %w", name, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 7 || fields[0] != name {
			continue
		}
		uid, err1 := strconv.ParseUint(fields[2], 10, 32)
		gid, err2 := strconv.ParseUint(fields[3], 10, 32)
		if err1 != nil || err2 != nil {
			return User{}, fmt.Errorf("lookup user %s: bad passwd entry", name)
		}
		u := User{Name: name, UID: uint32(uid), GID: uint32(gid), Home: fields[5], Shell: fields[6]}
		if u.Home == "" {
			u.Home = "/"
		}
		if u.Shell == "" {
			u.Shell = "/bin/sh"
		}
		return u, nil
	}
	return User{}, fmt.Errorf("lookup user %s: no such user", name)
}

// groupsOf returns the supplementary groups of user from the group file.
func groupsOf(path, user string) []uint32 {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var gids []uint32
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 4 {
			continue
		}
		for _, m := range strings.Split(fields[3], ",") {
			if m == user {
				if gid, err := strconv.ParseUint(fields[2], 10, 32); err == nil {
					gids = append(gids, uint32(gid))
				}
			}
		}
	}
	return gids
}

type ptyReq struct {
	Term          string
	Columns, Rows uint32
	Width, Height uint32
	Modes         string
}

type winChange struct {
	Columns, Rows uint32
	Width, Height uint32
}

type session struct {
	srv  *Server
	conn ssh.Conn
	ch   ssh.Channel
	user string
	log  *slog.Logger

	agentSock *agentSocket // set by auth-agent-req@openssh.com

	env  []string
	term string
	ptmx *os.File
	tty  *os.File

	mu      sync.Mutex
	proc    *os.Process
	started bool
	replied chan struct{} // closed once the start request is answered
}

func (s *Server) serveSession(ctx context.Context, conn ssh.Conn, ch ssh.Channel, reqs <-chan *ssh.Request, log *slog.Logger) {
	sess := &session{srv: s, conn: conn, ch: ch, user: conn.User(), log: log, replied: make(chan struct{})}
	defer sess.cleanup()
	var once sync.Once
	for req := range reqs {
		ok := sess.handle(ctx, req)
		if req.WantReply {
			req.Reply(ok, nil)
		}
		switch req.Type {
		case "shell", "exec", "subsystem":
			// Only now may the command's end close the channel: a
			// channel closed before the reply fails the client's request.
			once.Do(func() { close(sess.replied) })
		}
	}
}

func (s *session) cleanup() {
	s.ch.Close()
	if s.ptmx != nil {
		s.ptmx.Close()
	}
	if s.tty != nil {
		s.tty.Close()
	}
	if s.agentSock != nil {
		s.agentSock.close()
	}
}

func (s *session) handle(ctx context.Context, req *ssh.Request) bool {
	switch req.Type {
	case "env":
		var kv struct{ Name, Value string }
		if ssh.Unmarshal(req.Payload, &kv) != nil || kv.Name == "" || strings.ContainsAny(kv.Name, "=\x00") {
			return false
		}
		s.env = append(s.env, kv.Name+"="+kv.Value)
		return true
	case "pty-req":
		var p ptyReq
		if ssh.Unmarshal(req.Payload, &p) != nil || s.ptmx != nil {
			return false
		}
		ptmx, tty, err := pty.Open()
		if err != nil {
			s.log.Warn("open pty", "err", err)
			return false
		}
		s.ptmx, s.tty, s.term = ptmx, tty, p.Term
		setSize(ptmx, p.Columns, p.Rows, p.Width, p.Height)
		return true
	case "window-change":
		var w winChange
		if ssh.Unmarshal(req.Payload, &w) != nil || s.ptmx == nil {
			return false
		}
		setSize(s.ptmx, w.Columns, w.Rows, w.Width, w.Height)
		return true
	case "shell", "exec":
		var command string
		if req.Type == "exec" {
			var p struct{ Command string }
			if ssh.Unmarshal(req.Payload, &p) != nil {
				return false
			}
			command = p.Command
		}
		if err := s.start(req.Type == "shell", command); err != nil {
			s.log.Warn("start command", "err", err)
			fmt.Fprintf(s.ch.Stderr(), "minions-agent: %v\r\n", err)
			return false
		}
		return true
	case reqAuthAgent:
		return s.forwardAgent(req.Payload)
	case "subsystem":
		var p struct{ Name string }
		if ssh.Unmarshal(req.Payload, &p) != nil || p.Name != "sftp" {
			return false
		}
		return s.startSFTP()
	case "signal":
		var p struct{ Signal string }
		if ssh.Unmarshal(req.Payload, &p) != nil {
			return false
		}
		sig, ok := signals[p.Signal]
		if !ok {
			return false
		}
		s.mu.Lock()
		proc := s.proc
		s.mu.Unlock()
		if proc == nil {
			return false
		}
		// The command runs in its own process group (or session): signal
		// the whole group so `sh -c` children get it too.
		return syscall.Kill(-proc.Pid, sig) == nil
	}
	return false
}

// forwardAgent serves auth-agent-req@openssh.com: once per session,
// before the command starts (its environment gets SSH_AUTH_SOCK).
func (s *session) forwardAgent(payload []byte) bool {
	s.mu.Lock()
	started := s.started
	s.mu.Unlock()
	if started || s.agentSock != nil {
		return false
	}
	token, err := parseAgentReq(payload)
	if err != nil {
		return false
	}
	u, err := s.lookupUser()
	if err != nil {
		return false
	}
	a, err := startAgentForwarding(s.conn, s.srv.cfg.path("/tmp"), u, token)
	if err != nil {
		s.log.Warn("agent forwarding", "err", err)
		return false
	}
	s.agentSock = a
	s.env = append(s.env, "SSH_AUTH_SOCK="+a.path)
	return true
}

func setSize(f *os.File, cols, rows, w, h uint32) {
	pty.Setsize(f, &pty.Winsize{Cols: uint16(cols), Rows: uint16(rows), X: uint16(w), Y: uint16(h)})
}

// signals maps SSH signal names (RFC 4254 6.10) to signals.
var signals = map[string]syscall.Signal{
	"ABRT": syscall.SIGABRT, "ALRM": syscall.SIGALRM, "FPE": syscall.SIGFPE,
	"HUP": syscall.SIGHUP, "ILL": syscall.SIGILL, "INT": syscall.SIGINT,
	"KILL": syscall.SIGKILL, "PIPE": syscall.SIGPIPE, "QUIT": syscall.SIGQUIT,
	"SEGV": syscall.SIGSEGV, "TERM": syscall.SIGTERM, "USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2,
}

func signalName(sig syscall.Signal) string {
	for name, s := range signals {
		if s == sig {
			return name
		}
	}
	return strconv.Itoa(int(sig))
}

func (s *session) lookupUser() (User, error) {
	u, err := LookupUser(s.srv.cfg.path("/etc/passwd"), s.user)
	if err != nil {
		return User{}, err
	}
	if os.Geteuid() != 0 && uint32(os.Geteuid()) != u.UID {
		return User{}, fmt.Errorf("cannot act as %s", s.user)
	}
	return u, nil
}

func (s *session) start(login bool, command string) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("session already started")
	}
	s.started = true
	s.mu.Unlock()

	u, err := s.lookupUser()
	if err != nil {
		return err
	}
	shell := u.Shell
	if !fileExists(shell) {
		shell = "/bin/sh"
	}
	var cmd *exec.Cmd
	if login {
		cmd = exec.Command(shell)
		cmd.Args[0] = "-" + filepath.Base(shell)
	} else {
		cmd = exec.Command(shell, "-c", command)
	}
	cmd.Dir = u.Home
	if !fileExists(u.Home) {
		cmd.Dir = "/"
	}
	cmd.Env = s.environ(u, shell)
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if os.Geteuid() == 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{
			Uid: u.UID, Gid: u.GID, Groups: groupsOf(s.srv.cfg.path("/etc/group"), u.Name),
		}
	}
	if s.ptmx != nil {
		return s.startPTY(cmd)
	}
	return s.startPipes(cmd)
}

func (s *session) environ(u User, shell string) []string {
	env := []string{
		"HOME=" + u.Home,
		"USER=" + u.Name,
		"LOGNAME=" + u.Name,
		"SHELL=" + shell,
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	}
	if s.ptmx != nil {
		term := s.term
		if term == "" {
			term = "xterm-256color"
		}
		env = append(env, "TERM="+term)
	}
	return append(env, s.env...)
}

func (s *session) startPTY(cmd *exec.Cmd) error {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.tty, s.tty, s.tty
	cmd.SysProcAttr.Setsid = true
	cmd.SysProcAttr.Setctty = true
	cmd.SysProcAttr.Ctty = 0
	wait, err := startCmd(s.srv.cfg.Reaper, cmd)
	if err != nil {
		return err
	}
	s.tty.Close()
	s.tty = nil
	s.setProc(cmd.Process)
	out := make(chan struct{})
	go func() {
		defer close(out)
		io.Copy(s.ch, s.ptmx)
	}()
	go io.Copy(s.ptmx, s.ch)
	go s.finish(wait, out)
	return nil
}

func (s *session) startPipes(cmd *exec.Cmd) error {
	cmd.SysProcAttr.Setpgid = true
	inR, inW, err := os.Pipe()
	if err != nil {
		return err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	wait, err := startCmd(s.srv.cfg.Reaper, cmd)
	inR.Close()
	outW.Close()
	errW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		errR.Close()
		return err
	}
	s.setProc(cmd.Process)
	go func() {
		io.Copy(inW, s.ch)
		inW.Close()
	}()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); io.Copy(s.ch, outR) }()
	go func() { defer wg.Done(); io.Copy(s.ch.Stderr(), errR) }()
	out := make(chan struct{})
	go func() {
		wg.Wait()
		close(out)
	}()
	go func() {
		s.finish(wait, out)
		outR.Close()
		errR.Close()
	}()
	return nil
}

func (s *session) setProc(p *os.Process) {
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
}

// finish waits for the command, lets its output drain, reports the exit
// status and closes the channel.
func (s *session) finish(wait func() syscall.WaitStatus, out <-chan struct{}) {
	ws := wait()
	t := time.NewTimer(drainGrace)
	select {
	case <-out:
	case <-t.C:
	}
	t.Stop()
	<-s.replied
	s.ch.CloseWrite()
	if ws.Signaled() {
		msg := struct {
			Signal     string
			CoreDumped bool
			Error      string
			Lang       string
		}{Signal: signalName(ws.Signal()), CoreDumped: ws.CoreDump()}
		s.ch.SendRequest("exit-signal", false, ssh.Marshal(&msg))
	} else {
		s.ch.SendRequest("exit-status", false, ssh.Marshal(&struct{ Status uint32 }{uint32(ws.ExitStatus())}))
	}
	s.ch.Close()
}

func (s *session) startSFTP() bool {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return false
	}
	s.started = true
	s.mu.Unlock()
	u, err := s.lookupUser()
	if err != nil {
		return false
	}
	// The server runs inside the agent, so with the agent's identity:
	// files it creates belong to root. See the package notes.
	dir := u.Home
	if !fileExists(dir) {
		dir = "/"
	}
	// sftp.Server.Close closes its stream: keep the channel open for the
	// exit-status that scp and sftp wait for.
	srv, err := sftp.NewServer(keepOpen{s.ch}, sftp.WithServerWorkingDirectory(dir))
	if err != nil {
		return false
	}
	go func() {
		err := srv.Serve()
		status := uint32(0)
		if err != nil && !errors.Is(err, io.EOF) {
			status = 1
		}
		srv.Close()
		<-s.replied
		s.ch.SendRequest("exit-status", false, ssh.Marshal(&struct{ Status uint32 }{status}))
		s.ch.Close()
	}()
	return true
}

// keepOpen hides Close from the sftp server; the session closes the
// channel itself after the exit status.
type keepOpen struct{ ssh.Channel }

func (keepOpen) Close() error { return nil }

func (s *Server) directTCPIP(ctx context.Context, nc ssh.NewChannel) {
	var p struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil {
		nc.Reject(ssh.ConnectionFailed, "bad direct-tcpip request")
		return
	}
	d := net.Dialer{Timeout: 10 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))))
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		conn.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	splice(ch, conn)
}

// splice copies both ways between an SSH channel and a TCP connection,
// passing half-closes on, and closes both when both directions are done.
func splice(ch ssh.Channel, conn net.Conn) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		io.Copy(conn, ch)
		if tc, ok := conn.(interface{ CloseWrite() error }); ok {
			tc.CloseWrite()
		}
	}()
	go func() {
		defer wg.Done()
		io.Copy(ch, conn)
		ch.CloseWrite()
	}()
	wg.Wait()
	ch.Close()
	conn.Close()
}
