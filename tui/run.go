package tui

import (
	"context"
	"errors"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/term"

	"github.com/minionsdev/minions/service"
)

// Terminal is where a dashboard runs: an SSH session's channel and PTY
// size, or the process's own terminal.
type Terminal struct {
	// In and Out are the terminal's input and output. Neither needs to be
	// a file: an ssh.Session works as both.
	In  io.Reader
	Out io.Writer
	// Width and Height are the initial size in cells.
	Width, Height int
	// Resize delivers later sizes (the SSH window-change requests). It
	// may be nil. Under Run sizes reach a running console too.
	Resize <-chan service.WindowSize
}

// Run runs the dashboard on t until the user quits, ctx is cancelled or
// t.In ends. For an SSH session with a PTY:
//
//	pty, winCh, _ := s.Pty()
//	tui.Run(s.Context(), tui.Options{Backend: b, Renderer: bubbletea.MakeRenderer(s), User: u},
//	    tui.Terminal{In: s, Out: s, Width: pty.Window.Width, Height: pty.Window.Height, Resize: sizes(winCh)})
//
// When In is not a terminal file, Run owns the input: one goroutine reads
// it and hands it to either the dashboard or a console, so a console gets
// every keystroke and detaching loses none. That goroutine stays blocked in
// In.Read until In ends (close the session).
func Run(ctx context.Context, opts Options, t Terminal) error {
	if t.In == nil || t.Out == nil {
		return errInvalid("tui terminal: input and output are required")
	}
	if opts.Context == nil {
		opts.Context = ctx
	}
	if opts.Width == 0 && opts.Height == 0 {
		opts.Width, opts.Height = t.Width, t.Height
	}
	if opts.Renderer == nil {
		opts.Renderer = lipgloss.NewRenderer(t.Out)
	}
	if err := opts.Validate(); err != nil {
		return err
	}
	m := newModel(opts.withDefaults())
	var p *tea.Program
	send := func(msg tea.Msg) { p.Send(msg) }

	popts := []tea.ProgramOption{tea.WithOutput(t.Out), tea.WithAltScreen(), tea.WithContext(ctx)}
	local := isTerminalFile(t.In)
	if local {
		m.c.term = &terminal{size: service.WindowSize{Width: m.c.width, Height: m.c.height}, send: send}
		popts = append(popts, tea.WithInput(t.In))
	} else {
		in, _ := m.Attach(t.In, send)
		popts = append(popts, tea.WithInput(in), tea.WithoutSignalHandler())
	}
	tt := m.c.term
	p = tea.NewProgram(m, popts...)

	done := make(chan struct{})
	defer close(done)
	if tt.mux != nil {
		go func() {
			select {
			case <-tt.mux.ended:
				p.Quit()
			case <-done:
			}
		}()
	}
	if t.Resize != nil {
		go func() {
			for {
				select {
				case s, ok := <-t.Resize:
					if !ok {
						return
					}
					tt.resize(s)
				case <-done:
					return
				}
			}
		}()
	}
	_, err := p.Run()
	if errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// RunLocal runs the dashboard on the process's terminal (`minions tui`).
// opts.Renderer defaults to one on stdout and opts.User to $USER.
func RunLocal(ctx context.Context, opts Options) error {
	w, h, err := term.GetSize(os.Stdout.Fd())
	if err != nil {
		w, h = DefaultWidth, DefaultHeight
	}
	if opts.Renderer == nil {
		opts.Renderer = lipgloss.NewRenderer(os.Stdout)
	}
	if opts.User == "" {
		opts.User = os.Getenv("USER")
	}
	sizes := make(chan service.WindowSize, 1)
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	defer signal.Stop(winch)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for {
			select {
			case <-winch:
				if w, h, err := term.GetSize(os.Stdout.Fd()); err == nil {
					select {
					case sizes <- service.WindowSize{Width: w, Height: h}:
					default:
					}
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return Run(ctx, opts, Terminal{In: os.Stdin, Out: os.Stdout, Width: w, Height: h, Resize: sizes})
}

// Attach makes the dashboard own in, the input of a terminal that is not
// a terminal file (an SSH channel), for a caller that runs the tea.Program
// itself (the gateway): run the program on the returned reader
// (tea.WithInput), pass the program's Send as send, and give every window
// size to resize, which hands it to a running console or else to the
// program. Call it once, before the program starts; Run does it itself.
//
// A console then takes the input over from the program (whose read loop
// ends first) and gives it back on detach: without Attach, the program's
// read loop, which nothing can interrupt on such an input, stays blocked
// in a read when a console starts and swallows the first keys typed into
// it, and window sizes wait until the console ends.
func (m *Model) Attach(in io.Reader, send func(tea.Msg)) (programInput io.Reader, resize func(width, height int)) {
	t := &terminal{size: service.WindowSize{Width: m.c.width, Height: m.c.height}, send: send, mux: newInputMux(in, m.c.ctx.Done())}
	m.c.term = t
	return t.mux.reader(modeProgram), func(w, h int) { t.resize(service.WindowSize{Width: w, Height: h}) }
}

func isTerminalFile(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(f.Fd())
}

// terminal is the per-Run state shared with the console: the input mux
// (nil for a terminal file) and the routing of window sizes.
type terminal struct {
	mux  *inputMux
	send func(tea.Msg) // the program's Send

	mu      sync.Mutex
	size    service.WindowSize
	console chan service.WindowSize // set while a console runs
}

// resize routes a new size to the console if one runs, else to the program.
func (t *terminal) resize(s service.WindowSize) {
	s.Width, s.Height = sizeOr80x24(s.Width, s.Height)
	t.mu.Lock()
	t.size = s
	ch := t.console
	t.mu.Unlock()
	if ch != nil {
		select { // keep only the newest size
		case <-ch:
		default:
		}
		select {
		case ch <- s:
		default:
		}
		return
	}
	t.send(tea.WindowSizeMsg{Width: s.Width, Height: s.Height})
}

func (t *terminal) attachConsole(ch chan service.WindowSize) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.console = ch
}

// detachConsole stops routing sizes to the console and tells the program
// the size it missed meanwhile.
func (t *terminal) detachConsole() {
	t.mu.Lock()
	t.console = nil
	s := t.size
	t.mu.Unlock()
	go t.send(tea.WindowSizeMsg{Width: s.Width, Height: s.Height})
}

// Input modes of the mux.
const (
	modeProgram = iota
	modeConsole
)

// inputMux reads one input stream and gives it to whichever side (the
// program or a console) is active. A reader of the inactive side gets
// io.EOF at once, so the program's read loop ends cleanly when a console
// takes over, and a new one starts (tea's RestoreTerminal) afterwards.
type inputMux struct {
	chunks chan []byte
	ended  chan struct{} // closed when the source returns an error

	mu      sync.Mutex
	mode    int
	changed chan struct{} // closed and replaced on every mode change
	pending []byte
}

// newInputMux starts reading src; the reading goroutine ends when src
// does, or when done is closed while it holds input nobody takes.
func newInputMux(src io.Reader, done <-chan struct{}) *inputMux {
	m := &inputMux{
		chunks:  make(chan []byte),
		ended:   make(chan struct{}),
		changed: make(chan struct{}),
	}
	go m.pump(src, done)
	return m
}

func (m *inputMux) pump(src io.Reader, done <-chan struct{}) {
	defer close(m.ended)
	for {
		buf := make([]byte, 4096)
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case m.chunks <- buf[:n]:
			case <-done:
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (m *inputMux) setMode(mode int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mode == mode {
		return
	}
	m.mode = mode
	close(m.changed)
	m.changed = make(chan struct{})
}

// unread puts b back in front of the pending input.
func (m *inputMux) unread(b []byte) {
	if len(b) == 0 {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pending = append(append([]byte(nil), b...), m.pending...)
}

// reader returns the reader of one side.
func (m *inputMux) reader(mode int) io.Reader { return muxReader{m: m, mode: mode} }

type muxReader struct {
	m    *inputMux
	mode int
}

func (r muxReader) Read(p []byte) (int, error) {
	m := r.m
	for {
		m.mu.Lock()
		if m.mode != r.mode {
			m.mu.Unlock()
			return 0, io.EOF
		}
		if len(m.pending) > 0 {
			n := copy(p, m.pending)
			m.pending = m.pending[n:]
			m.mu.Unlock()
			return n, nil
		}
		changed := m.changed
		m.mu.Unlock()
		select {
		case b := <-m.chunks:
			m.mu.Lock()
			m.pending = append(m.pending, b...)
			m.mu.Unlock()
		case <-changed:
		case <-m.ended:
			m.mu.Lock()
			empty := len(m.pending) == 0
			m.mu.Unlock()
			if empty {
				return 0, io.EOF
			}
		}
	}
}
