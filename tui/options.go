package tui

import (
	"context"
	"log/slog"
	"time"

	"github.com/charmbracelet/lipgloss"
	"github.com/minionsdev/minions/internal/errs"

	"github.com/minionsdev/minions/service"
)

// Defaults.
const (
	DefaultRefresh   = 2 * time.Second
	DefaultWidth     = 80
	DefaultHeight    = 24
	MinRefresh       = 100 * time.Millisecond
	defaultCPUs      = 1
	defaultMemoryMiB = 512
)

// Options configure one dashboard (one per session).
type Options struct {
	// Backend is Minions bound to the caller (service.Backend: in-process
	// or over HTTP). Required.
	Backend service.Backend
	// URL, when set, returns a VM's HTTPS URL for the detail page.
	URL func(vm string) string
	// Renderer builds every style, so each SSH session uses its own colour
	// profile. Default: a renderer on io.Discard (no colour); callers pass
	// wish's bubbletea.MakeRenderer(session) or lipgloss.NewRenderer(os.Stdout).
	Renderer *lipgloss.Renderer
	// User is the caller's name, shown in the header.
	User string
	// Admin shows the owner column (admins see every VM) and offers the
	// hosts view (key h). The backend still decides: a non-admin's backend
	// refuses the host calls whatever this says.
	Admin bool
	// Width and Height are the initial terminal size in cells until the
	// first tea.WindowSizeMsg. Default 80x24.
	Width, Height int
	// Refresh is the live refresh interval of the list and detail pages.
	// Default 2s; minimum 100ms; negative disables the live refresh (data
	// then reloads after each action only).
	Refresh time.Duration
	// Context bounds every backend call; cancel it when the session ends.
	// Default context.Background().
	Context context.Context
	// Now is the clock used for uptimes and ages. Default time.Now.
	Now func() time.Time
	// Logger receives backend errors and console sessions. Default: discard.
	Logger *slog.Logger
}

// Validate reports the first invalid field.
func (o Options) Validate() error {
	switch {
	case o.Backend == nil:
		return errs.New(errs.InvalidArgument, "tui options: backend is required")
	case o.Width < 0 || o.Height < 0:
		return errs.New(errs.InvalidArgument, "tui options: negative size %dx%d", o.Width, o.Height)
	case o.Refresh > 0 && o.Refresh < MinRefresh:
		return errs.New(errs.InvalidArgument, "tui options: refresh %s below %s", o.Refresh, MinRefresh)
	}
	return nil
}

// withDefaults returns o with every zero field set to its default.
func (o Options) withDefaults() Options {
	if o.Renderer == nil {
		o.Renderer = lipgloss.NewRenderer(discard{})
	}
	if o.Width == 0 {
		o.Width = DefaultWidth
	}
	if o.Height == 0 {
		o.Height = DefaultHeight
	}
	if o.Refresh == 0 {
		o.Refresh = DefaultRefresh
	}
	if o.Context == nil {
		o.Context = context.Background()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.Logger = o.Logger.With("component", "tui")
	return o
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func errInvalid(msg string) error { return errs.New(errs.InvalidArgument, "%s", msg) }
