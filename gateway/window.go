package gateway

import (
	"sync"

	"github.com/charmbracelet/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// frontDoorSession hands a session channel to charmbracelet/ssh's session
// handler with window changes taken out of its request stream: that handler
// updates the session's PTY without a lock (a data race with Session.Pty)
// and blocks its request loop until someone reads the window channel. The
// front door reads window sizes from windows instead.
func (s *Server) frontDoorSession(conn *gossh.ServerConn, newChan gossh.NewChannel, ctx ssh.Context) {
	w := &windows{updates: make(chan ssh.Window, 1)}
	srv := &ssh.Server{Handler: func(sess ssh.Session) { s.frontDoor(sess, w) }}
	ssh.DefaultSessionHandler(srv, conn, windowFilter{NewChannel: newChan, w: w}, ctx)
}

// windows is the current window size of one session and its changes.
type windows struct {
	mu      sync.Mutex
	cur     ssh.Window
	updates chan ssh.Window // capacity 1: the latest change not yet read
}

// Size of a terminal whose client reports none (a PTY of 0x0: script,
// some CI runners, ssh -tt without a terminal).
const (
	defaultCols = 80
	defaultRows = 24
)

// orDefault is win with each dimension the client did not report set to
// 80x24's.
func orDefault(win ssh.Window) ssh.Window {
	if win.Width <= 0 {
		win.Width = defaultCols
	}
	if win.Height <= 0 {
		win.Height = defaultRows
	}
	return win
}

func (w *windows) set(win ssh.Window) {
	win = orDefault(win)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.cur = win
	select {
	case <-w.updates:
	default:
	}
	w.updates <- win
}

// current is the latest size, 80x24 before the client sent one.
func (w *windows) current() ssh.Window {
	w.mu.Lock()
	defer w.mu.Unlock()
	return orDefault(w.cur)
}

type windowFilter struct {
	gossh.NewChannel
	w *windows
}

func (f windowFilter) Accept() (gossh.Channel, <-chan *gossh.Request, error) {
	ch, reqs, err := f.NewChannel.Accept()
	if err != nil {
		return ch, reqs, err
	}
	out := make(chan *gossh.Request)
	go func() {
		defer close(out)
		for r := range reqs {
			switch r.Type {
			case "pty-req":
				var p struct {
					Term                      string
					Cols, Rows, Width, Height uint32
					Modes                     string
				}
				if gossh.Unmarshal(r.Payload, &p) == nil {
					f.w.set(ssh.Window{Width: int(p.Cols), Height: int(p.Rows)})
				}
			case "window-change":
				var p struct{ Cols, Rows, Width, Height uint32 }
				ok := gossh.Unmarshal(r.Payload, &p) == nil
				if ok {
					f.w.set(ssh.Window{Width: int(p.Cols), Height: int(p.Rows)})
				}
				if r.WantReply {
					_ = r.Reply(ok, nil)
				}
				continue
			}
			out <- r
		}
	}()
	return ch, out, nil
}
