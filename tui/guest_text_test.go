package tui_test

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/tui/tuitest"
)

// evil is a guest that puts terminal control in everything it reports.
const evil = "\x1b]52;c;ZXZpbA==\x07host\x1b[2J\u009b31m"

type evilBackend struct{ *tuitest.Fake }

func (b evilBackend) Status(ctx context.Context, name string) (service.GuestStatus, error) {
	st, err := b.Fake.Status(ctx, name)
	st.AgentVersion, st.Kernel = evil+"-v", evil+"-k"
	return st, err
}

func (b evilBackend) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	if err := b.Fake.Logs(ctx, name, follow, w); err != nil {
		return err
	}
	_, err := io.WriteString(w, evil+"-console\n")
	return err
}

// TestGuestTextIsCleaned: what a guest reports (agent version, kernel,
// console tail, error messages quoting it) reaches the screen without
// escape sequences or control characters; the text itself stays.
func TestGuestTextIsCleaned(t *testing.T) {
	f := tuitest.NewSeeded()
	opts := testOptions(f, 100, 40)
	opts.Backend = evilBackend{f}
	m, err := tui.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	d := newDriver(t, m)
	d.keys("j", "j", "enter")
	view := d.view()
	for _, want := range []string{"host-v", "host-k", "host-console"} {
		if !strings.Contains(view, want) {
			t.Errorf("detail view lacks %q:\n%s", want, view)
		}
	}
	assertNoControl(t, view)

	// An error that quotes the guest, on the status line.
	f.Fail("Stop", errs.New(errs.Unavailable, "agent said %s", evil))
	d.keys("x")
	view = d.view()
	if !strings.Contains(view, "agent said host") {
		t.Errorf("status line lacks the error:\n%s", view)
	}
	assertNoControl(t, view)
}

func assertNoControl(t *testing.T, view string) {
	t.Helper()
	for _, r := range view {
		if r == '\n' {
			continue
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			t.Fatalf("view holds control character %U:\n%q", r, view)
		}
	}
}
