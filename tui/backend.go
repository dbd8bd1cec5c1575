package tui

import (
	"bytes"
	"context"
	"io"
	"strings"
	"time"

	"github.com/minionsdev/minions/service"
)

// The dashboard calls a service.Backend (Options.Backend), already bound
// to one caller: List returns only what the caller may see and every
// method enforces the caller's permissions. Errors carry an internal/errs
// class; the dashboard shows them on its status line and never exits on
// them. The backend is called from tea.Cmd goroutines with a context that
// is cancelled when the session ends.

// VM statuses the dashboard knows; others are shown as they are.
const (
	StatusRunning  = "running"
	StatusStopped  = "stopped"
	StatusStarting = "starting"
	StatusStopping = "stopping"
	StatusCreating = "creating"
	StatusError    = "error"
)

// Detail is everything the detail page shows about one VM, gathered by
// loadDetail from several backend calls.
type Detail struct {
	VM service.VM
	// Agent is what the guest agent reports; nil when it is not reachable
	// (AgentErr says why).
	Agent       *service.GuestStatus
	AgentErr    string
	ConsoleTail []string // last lines of the serial console, oldest first
	Snapshots   []service.Snapshot
	URL         string          // the VM's HTTPS URL, empty when there is none
	Events      []service.Event // the VM's most recent events
}

// Detail page limits.
const (
	detailStatusTimeout = 2 * time.Second
	detailConsoleBytes  = 64 << 10
	detailConsoleLines  = 50
	detailEvents        = 5
)

// loadDetail gathers VM name's detail page. Only the VM itself must load;
// the agent, console, events and snapshots are best effort.
func loadDetail(ctx context.Context, be service.Backend, url func(string) string, name string) (Detail, error) {
	v, err := be.Get(ctx, name)
	if err != nil {
		return Detail{}, err
	}
	d := Detail{VM: v}
	if url != nil {
		d.URL = url(v.Name)
	}
	if v.Status == StatusRunning {
		sctx, cancel := context.WithTimeout(ctx, detailStatusTimeout)
		st, err := be.Status(sctx, name)
		cancel()
		if err != nil {
			d.AgentErr = err.Error()
		} else {
			d.Agent = &st
		}
	} else {
		d.AgentErr = "vm is " + v.Status
	}
	var buf bytes.Buffer
	if err := be.Logs(ctx, name, false, &limitTail{w: &buf, max: detailConsoleBytes}); err == nil && buf.Len() > 0 {
		lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
		if len(lines) > detailConsoleLines {
			lines = lines[len(lines)-detailConsoleLines:]
		}
		d.ConsoleTail = lines
	}
	if evs, err := be.Events(ctx, service.EventFilter{VM: v.ID, Limit: detailEvents}); err == nil {
		d.Events = evs
	}
	if ss, err := be.ListSnapshots(ctx, name); err == nil {
		d.Snapshots = ss
	}
	return d, nil
}

// limitTail keeps the last max bytes written to it.
type limitTail struct {
	w   *bytes.Buffer
	max int
}

func (l *limitTail) Write(p []byte) (int, error) {
	l.w.Write(p)
	if l.w.Len() > l.max {
		b := l.w.Bytes()[l.w.Len()-l.max:]
		nb := append([]byte(nil), b...)
		l.w.Reset()
		l.w.Write(nb)
	}
	return len(p), nil
}

// ImageChoice is one operating system offered by the create form: an OS
// (its newest version) or a pinned version.
type ImageChoice struct {
	Name    string
	Default bool
}

// ImageChoices is what the create form offers for ims: one choice per OS built (its newest version), the
// default preselected; a default pinned to an older version is offered as
// that version.
func ImageChoices(ims []service.ImageInfo) []ImageChoice {
	newest := map[string]service.ImageInfo{}
	var order []string
	for _, im := range ims { // oldest first per OS
		if _, ok := newest[im.OS]; !ok {
			order = append(order, im.OS)
		}
		newest[im.OS] = im
	}
	out := []ImageChoice{}
	for _, osName := range order {
		out = append(out, ImageChoice{Name: osName})
	}
	for _, im := range ims {
		if !im.Default {
			continue
		}
		if newest[im.OS].Ref == im.Ref {
			for i := range out {
				out[i].Default = out[i].Name == im.OS
			}
		} else {
			out = append(out, ImageChoice{Name: im.Ref, Default: true})
		}
	}
	return out
}

// consoleInitialSize is how long a console waits for the terminal's size
// before it starts at 80x24.
const consoleInitialSize = 200 * time.Millisecond

// runConsole runs an interactive login shell in VM name with a PTY: it
// copies stdin to the shell and the shell's output to stdout, applies
// every size received on size (the first one is the initial size) and
// returns when the shell exits or ctx is cancelled (detach).
func runConsole(ctx context.Context, be service.Backend, name string, stdin io.Reader, stdout io.Writer, size <-chan service.WindowSize) error {
	req := service.ExecRequest{Stdin: stdin, Stdout: stdout, Stderr: stdout, TTY: true, Term: "xterm-256color", Resize: size}
	select {
	case ws := <-size:
		req.Width, req.Height = ws.Width, ws.Height
	case <-time.After(consoleInitialSize):
		req.Width, req.Height = 80, 24
	}
	_, err := be.Exec(ctx, name, req)
	return err
}

// snapKind is what a snapshot holds: "disk" or "disk+memory".
func snapKind(s service.Snapshot) string {
	if s.Memory {
		return "disk+memory"
	}
	return "disk"
}
