package vsockcli

import (
	"context"
	"errors"
	"io"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// WindowSize is a terminal size in characters.
type WindowSize struct {
	Width, Height int
}

// ExecRequest is one command to run in the guest.
type ExecRequest struct {
	// Command is run with /bin/sh -c. Empty with TTY set: a login shell.
	Command string
	// Argv, when set, replaces Command with its shell-quoted words.
	Argv []string
	Env  map[string]string
	// Stdin is copied to the command until EOF (then its stdin closes).
	Stdin io.Reader
	// Stdout and Stderr receive the output (nil: discarded); they may be
	// the same writer.
	Stdout, Stderr io.Writer
	// TTY allocates a pseudo-terminal of Width x Height (default 80x24)
	// with TERM=Term (default xterm-256color); stderr then arrives on
	// Stdout.
	TTY           bool
	Term          string
	Width, Height int
	// Resize and Signals, when set, forward window changes and signals
	// ("INT", "TERM", "KILL", ...) until the command exits.
	Resize  <-chan WindowSize
	Signals <-chan string
}

// Exec runs a command and returns its exit code (128+n when it was killed
// by signal n). A non-nil error means the command could not be run or its
// status was lost; when ctx ends the command is killed.
func (c *Client) Exec(ctx context.Context, req ExecRequest) (int, error) {
	sess, err := c.ssh.NewSession()
	if err != nil {
		return -1, errs.New(errs.Unavailable, "exec: open session: %w", err)
	}
	defer sess.Close()
	for k, v := range req.Env {
		if err := sess.Setenv(k, v); err != nil {
			return -1, errs.New(errs.FailedPrecondition, "exec: set %s: %w", k, err)
		}
	}
	if req.TTY {
		term, w, h := req.Term, req.Width, req.Height
		if term == "" {
			term = "xterm-256color"
		}
		if w <= 0 {
			w = 80
		}
		if h <= 0 {
			h = 24
		}
		if err := sess.RequestPty(term, h, w, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
			return -1, errs.New(errs.FailedPrecondition, "exec: request pty: %w", err)
		}
	}
	sess.Stdout, sess.Stderr = req.Stdout, req.Stderr
	if req.Stdout != nil && req.Stdout == req.Stderr {
		// Both streams are copied concurrently: one writer needs a lock.
		w := &lockedWriter{w: req.Stdout}
		sess.Stdout, sess.Stderr = w, w
	}
	// Stdin is copied outside Session.Wait so a Stdin that never ends
	// does not hold up the exit status.
	stdin, err := sess.StdinPipe()
	if err != nil {
		return -1, err
	}
	command := req.Command
	if len(req.Argv) > 0 {
		command = ShellQuote(req.Argv)
	}
	if command == "" && req.TTY {
		err = sess.Shell()
	} else {
		err = sess.Start(command)
	}
	if err != nil {
		return -1, errs.New(errs.FailedPrecondition, "exec: start: %w", err)
	}
	if req.Stdin != nil {
		go func() {
			io.Copy(stdin, req.Stdin)
			stdin.Close()
		}()
	} else {
		stdin.Close()
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	for {
		select {
		case err := <-done:
			var exit *ssh.ExitError
			switch {
			case err == nil:
				return 0, nil
			case errors.As(err, &exit):
				return exit.ExitStatus(), nil
			}
			return -1, errs.New(errs.Unavailable, "exec: %w", err)
		case ws, ok := <-req.Resize:
			if !ok {
				req.Resize = nil
				continue
			}
			sess.WindowChange(ws.Height, ws.Width)
		case sig, ok := <-req.Signals:
			if !ok {
				req.Signals = nil
				continue
			}
			sess.Signal(ssh.Signal(sig))
		case <-ctx.Done():
			sess.Signal(ssh.SIGKILL)
			sess.Close()
			return -1, errs.New(errs.Unavailable, "exec: %w", ctx.Err())
		}
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
