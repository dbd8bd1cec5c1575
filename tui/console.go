package tui

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/term"
	"github.com/muesli/cancelreader"

	"github.com/minionsdev/minions/service"
)

// consoleReadyMsg says the input has been handed over to a console (under
// Run or after Attach) and the tea.Exec may start.
type consoleReadyMsg struct{ name string }

// console opens a shell in VM name in this terminal. Under Run or after
// Attach the input is first taken from the program (so the program's reader stops cleanly
// and loses no keystroke), then the console runs with tea.Exec.
func (c *common) console(name string) tea.Cmd {
	if c.term != nil && c.term.mux != nil {
		t := c.term
		return func() tea.Msg {
			t.mux.setMode(modeConsole)
			return consoleReadyMsg{name: name}
		}
	}
	return c.execConsole(name)
}

func (c *common) execConsole(name string) tea.Cmd {
	x := &consoleCmd{c: c, name: name}
	return tea.Exec(x, func(err error) tea.Msg { return consoleDoneMsg{name: name, err: err} })
}

// consoleCmd is a tea.ExecCommand that relays the program's terminal to
// runConsole until the shell exits or the user types ctrl+].
type consoleCmd struct {
	c      *common
	name   string
	stdin  io.Reader
	stdout io.Writer
}

var _ tea.ExecCommand = (*consoleCmd)(nil)

func (x *consoleCmd) SetStdin(r io.Reader)  { x.stdin = r }
func (x *consoleCmd) SetStdout(w io.Writer) { x.stdout = w }
func (x *consoleCmd) SetStderr(io.Writer)   {}

// errDetached ends a console that the user detached from.
var errDetached = errors.New("detached")

// Run implements tea.ExecCommand.
func (x *consoleCmd) Run() error {
	c := x.c
	ctx, cancel := context.WithCancelCause(c.ctx)
	defer cancel(nil)

	in, release, err := x.input()
	if err != nil {
		return err
	}
	defer release()

	// Local terminals are left in cooked mode by ReleaseTerminal.
	if f, ok := x.stdin.(*os.File); ok && term.IsTerminal(f.Fd()) && (c.term == nil || c.term.mux == nil) {
		st, err := term.MakeRaw(f.Fd())
		if err == nil {
			defer term.Restore(f.Fd(), st) //nolint:errcheck // best effort on the way out
		}
	}

	sizes := make(chan service.WindowSize, 1)
	sizes <- service.WindowSize{Width: c.width, Height: c.height}
	if c.term != nil {
		c.term.attachConsole(sizes)
		defer c.term.detachConsole()
	}

	fmt.Fprintf(x.stdout, "\x1b[2J\x1b[H\x1b[?25h%s — ctrl+] to return to the dashboard\r\n", x.name)
	c.log.Info("console open", "vm", x.name)
	start := time.Now()

	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 4096)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				chunk := buf[:n]
				if i := bytes.IndexByte(chunk, ConsoleDetachKey); i >= 0 {
					_, _ = pw.Write(chunk[:i])
					if t := c.term; t != nil && t.mux != nil {
						t.mux.unread(chunk[i+1:]) // typed after detaching: for the dashboard
					}
					cancel(errDetached)
					pw.Close()
					return
				}
				if _, werr := pw.Write(chunk); werr != nil {
					return
				}
			}
			if err != nil {
				if errors.Is(err, io.EOF) && ctx.Err() == nil {
					cancel(io.EOF) // the terminal went away
				}
				pw.CloseWithError(err)
				return
			}
		}
	}()

	err = runConsole(ctx, c.backend, x.name, pr, x.stdout, sizes)
	detached := errors.Is(context.Cause(ctx), errDetached)
	cancel(nil)
	pr.Close()
	release()
	waitTimeout(&wg, time.Second)
	c.log.Info("console closed", "vm", x.name, "detached", detached, "duration_ms", time.Since(start).Milliseconds(), "err", err)
	fmt.Fprint(x.stdout, "\r\n")
	if detached || errors.Is(err, context.Canceled) && detached {
		return nil
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// input returns the reader the console reads the user's keys from and a
// function that gives the input back to the dashboard. Under Run it is the
// terminal's console side; a terminal file is read through a cancelable
// reader so no keystroke is lost after detaching.
func (x *consoleCmd) input() (io.Reader, func(), error) {
	if t := x.c.term; t != nil && t.mux != nil {
		var once sync.Once
		return t.mux.reader(modeConsole), func() { once.Do(func() { t.mux.setMode(modeProgram) }) }, nil
	}
	if x.stdin == nil {
		return nil, nil, fmt.Errorf("console: no input")
	}
	if _, ok := x.stdin.(cancelreader.File); ok {
		cr, err := cancelreader.NewReader(x.stdin)
		if err != nil {
			return nil, nil, fmt.Errorf("console input: %w", err)
		}
		var once sync.Once
		return cr, func() { once.Do(func() { cr.Cancel(); cr.Close() }) }, nil
	}
	// A plain reader cannot be interrupted: its pending read may swallow
	// the first keys typed after detaching. Run avoids this case.
	return x.stdin, func() {}, nil
}

func waitTimeout(wg *sync.WaitGroup, d time.Duration) {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}
