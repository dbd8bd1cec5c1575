package tui

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/textsafe"
	"github.com/minionsdev/minions/tui/widget"

	"github.com/minionsdev/minions/service"
)

// common is the state every page shares: one per session.
type common struct {
	ctx     context.Context
	backend service.Backend
	url     func(vm string) string
	styles  *Styles
	keys    KeyMap
	now     func() time.Time
	log     *slog.Logger
	user    string
	admin   bool
	refresh time.Duration

	width, height int
	// nav queues page changes made while handling a message; the root
	// model applies them right after, so the next key reaches the new page.
	nav []navOp

	// term is set when the dashboard runs under Run: it hands the input
	// to a console and routes window sizes to it.
	term *terminal
}

func newCommon(o Options) *common {
	st := NewStyles(o.Renderer)
	return &common{
		ctx:     o.Context,
		backend: o.Backend,
		url:     o.URL,
		styles:  st,
		keys:    DefaultKeyMap(),
		now:     o.Now,
		log:     o.Logger,
		user:    o.User,
		admin:   o.Admin,
		refresh: o.Refresh,
		width:   o.Width,
		height:  o.Height,
	}
}

func (c *common) formKeys() widget.FormKeys {
	return widget.FormKeys{
		Next:   key.NewBinding(key.WithKeys("tab", "down")),
		Prev:   key.NewBinding(key.WithKeys("shift+tab", "up")),
		Submit: key.NewBinding(key.WithKeys("enter")),
		Cancel: key.NewBinding(key.WithKeys("esc")),
		Left:   key.NewBinding(key.WithKeys("left", "h")),
		Right:  key.NewBinding(key.WithKeys("right", "l", " ")),
	}
}

// op runs fn as a tea.Cmd and reports its outcome as an opDoneMsg.
func (c *common) op(verb, name string, fn func(ctx context.Context) error) tea.Cmd {
	return func() tea.Msg {
		err := fn(c.ctx)
		if err != nil {
			c.log.Warn("vm action", "action", verb, "vm", name, "err", err)
		}
		return opDoneMsg{verb: verb, name: name, err: err}
	}
}

// opNote is op with a note for the status line on success.
func (c *common) opNote(verb, name, note string, fn func(ctx context.Context) error) tea.Cmd {
	cmd := c.op(verb, name, fn)
	return func() tea.Msg {
		msg := cmd().(opDoneMsg)
		msg.note = note
		return msg
	}
}

// errorText is the one place that turns a backend error into the status
// line text: the class decides the prefix a user sees.
func errorText(err error) string {
	if err == nil {
		return ""
	}
	return textsafe.Clean(errorClassText(err))
}

// errorClassText is errorText before cleaning (messages may quote a guest).
func errorClassText(err error) string {
	if errors.Is(err, context.Canceled) {
		return "cancelled"
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return "timed out: " + err.Error()
	}
	switch errs.ClassOf(err) {
	case errs.NotFound:
		return "not found: " + err.Error()
	case errs.AlreadyExists:
		return "already exists: " + err.Error()
	case errs.InvalidArgument:
		return "invalid: " + err.Error()
	case errs.FailedPrecondition:
		return "not now: " + err.Error()
	case errs.PermissionDenied, errs.Unauthenticated:
		return "not allowed: " + err.Error()
	case errs.Unavailable:
		return "unavailable, try again: " + err.Error()
	case errs.ResourceExhausted:
		return "out of resources: " + err.Error()
	}
	return "error: " + err.Error()
}

// Formatting helpers shared by pages.

func fmtMemory(mib int) string {
	if mib <= 0 {
		return "-"
	}
	if mib%1024 == 0 {
		return fmt.Sprintf("%dG", mib/1024)
	}
	if mib > 1024 {
		return fmt.Sprintf("%.1fG", float64(mib)/1024)
	}
	return fmt.Sprintf("%dM", mib)
}

// fmtDuration is a compact age: 45s, 12m, 3h4m, 2d5h.
func fmtDuration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

func (c *common) uptime(v service.VM) string {
	if v.Status != StatusRunning || v.StartedAt.IsZero() {
		return "-"
	}
	return fmtDuration(c.now().Sub(v.StartedAt))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// center places s in the middle of a w x h area.
func center(w, h int, s string) string {
	return lipgloss.Place(w, h, lipgloss.Center, lipgloss.Center, s)
}

// navOp is a queued page change: open a page, close a given page (and
// any above it), or with both nil close the top page.
type navOp struct{ open, close page }

// open shows p on top of the current page.
func (c *common) open(p page) tea.Cmd {
	c.nav = append(c.nav, navOp{open: p})
	return nil
}

// back closes the top page.
func (c *common) back() tea.Cmd {
	c.nav = append(c.nav, navOp{})
	return nil
}

// closePage closes p and every page above it.
func (c *common) closePage(p page) tea.Cmd {
	c.nav = append(c.nav, navOp{close: p})
	return nil
}
