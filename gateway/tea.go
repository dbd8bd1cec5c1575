package gateway

import (
	"io"
	"strings"
	"sync"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/ssh"
	"github.com/muesli/termenv"
	gossh "golang.org/x/crypto/ssh"
)

func gosshFingerprint(k gossh.PublicKey) string { return gossh.FingerprintSHA256(k) }

// newRenderer returns a lipgloss renderer for this session only: colour
// profile from the client's TERM/COLORTERM, never a terminal query (which
// would read the user's keystrokes).
func newRenderer(sess ssh.Session) *lipgloss.Renderer {
	pty, _, _ := sess.Pty()
	env := sessEnv(append(sess.Environ(), "TERM="+pty.Term))
	o := termenv.NewOutput(sess, termenv.WithEnvironment(env), termenv.WithUnsafe(), termenv.WithTTY(true))
	r := lipgloss.NewRenderer(sess, termenv.WithEnvironment(env), termenv.WithUnsafe(), termenv.WithTTY(true))
	r.SetColorProfile(o.EnvColorProfile())
	r.SetHasDarkBackground(true)
	return r
}

type sessEnv []string

func (e sessEnv) Environ() []string { return e }

func (e sessEnv) Getenv(k string) string {
	for i := len(e) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(e[i], k+"="); ok {
			return v
		}
	}
	return ""
}

// InputOwner is a model that runs other programs on the session's
// terminal (the dashboard's VM console under tea.Exec) and so must own the
// session's input and window sizes: Bubble Tea cannot interrupt a read on
// an SSH channel, so a released program would keep reading and swallow
// the first keys typed into the console. runTea calls Attach once before
// the program starts, runs the program on the reader it returns, and gives
// every window size to resize instead of sending it to the program.
// tui.Model implements it.
type InputOwner interface {
	Attach(in io.Reader, send func(tea.Msg)) (programInput io.Reader, resize func(width, height int))
}

// runTea runs a Bubble Tea program on the session until it quits or the
// connection ends, and returns its final model.
func (s *Server) runTea(sess ssh.Session, in *sessionInput, w *windows, m tea.Model) tea.Model {
	ctx, cancel := s.sessionContext(sess.Context())
	defer cancel()
	r := in.reader()
	defer r.stop()
	pty, _, _ := sess.Pty()
	var p *tea.Program
	var input io.Reader = r
	resize := func(width, height int) { p.Send(tea.WindowSizeMsg{Width: width, Height: height}) }
	if o, ok := m.(InputOwner); ok {
		input, resize = o.Attach(r, func(msg tea.Msg) { p.Send(msg) })
	}
	p = tea.NewProgram(m,
		tea.WithInput(input),
		tea.WithOutput(sess),
		tea.WithAltScreen(),
		tea.WithContext(ctx),
		tea.WithEnvironment(append(sess.Environ(), "TERM="+pty.Term)),
		tea.WithoutSignalHandler(),
		// Release the input as soon as the program quits, so its read loop
		// ends at once instead of after bubbletea's read-loop timeout.
		tea.WithFilter(func(_ tea.Model, msg tea.Msg) tea.Msg {
			if _, ok := msg.(tea.QuitMsg); ok {
				r.stop()
			}
			return msg
		}),
	)
	done := make(chan struct{})
	defer close(done)
	go func() {
		cur := w.current()
		resize(cur.Width, cur.Height)
		for {
			select {
			case <-done:
				return
			case win := <-w.updates:
				resize(win.Width, win.Height)
			}
		}
	}()
	final, err := p.Run()
	if err != nil && ctx.Err() == nil {
		s.log.Warn("tui ended with error", "user", sess.User(), "err", err)
	}
	if final == nil {
		final = m
	}
	return final
}

// sessionInput reads a session's input once and hands it to one program at
// a time, so that a program ending does not swallow the next keystroke (a
// blocked Read on an SSH channel cannot be cancelled).
type sessionInput struct {
	chunks chan []byte
	mu     sync.Mutex
	rest   []byte
	once   sync.Once
	src    io.Reader
	eof    chan struct{}
}

func newSessionInput(src io.Reader) *sessionInput {
	return &sessionInput{chunks: make(chan []byte), src: src, eof: make(chan struct{})}
}

func (in *sessionInput) pump() {
	defer close(in.eof)
	for {
		buf := make([]byte, 1024)
		n, err := in.src.Read(buf)
		if n > 0 {
			in.chunks <- buf[:n]
		}
		if err != nil {
			return
		}
	}
}

type inputReader struct {
	in   *sessionInput
	done chan struct{}
	once sync.Once
}

func (in *sessionInput) reader() *inputReader {
	in.once.Do(func() { go in.pump() })
	return &inputReader{in: in, done: make(chan struct{})}
}

func (r *inputReader) stop() { r.once.Do(func() { close(r.done) }) }

func (r *inputReader) Read(p []byte) (int, error) {
	in := r.in
	select {
	case <-r.done:
		return 0, io.EOF
	default:
	}
	in.mu.Lock()
	if len(in.rest) > 0 {
		n := copy(p, in.rest)
		in.rest = in.rest[n:]
		in.mu.Unlock()
		return n, nil
	}
	in.mu.Unlock()
	select {
	case <-r.done:
		return 0, io.EOF
	case <-in.eof:
		return 0, io.EOF
	case b := <-in.chunks:
		n := copy(p, b)
		if n < len(b) {
			in.mu.Lock()
			in.rest = append(in.rest, b[n:]...)
			in.mu.Unlock()
		}
		return n, nil
	}
}
