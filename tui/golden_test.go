package tui_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/exp/teatest"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/tui/tuitest"
)

// TestGolden runs the real tea.Program (teatest) through each main screen
// and compares the final frame with testdata/TestGolden/<name>.golden.
// Regenerate with: go test ./tui -run TestGolden -update
func TestGolden(t *testing.T) {
	tests := []struct {
		name  string
		w, h  int
		admin bool
		keys  []string
		wait  string // the frame is complete once the output shows this
		setup func(*tuitest.Fake)
	}{
		{name: "list", w: 80, h: 20, wait: "worker"},
		{name: "list_admin", w: 100, h: 12, admin: true, wait: "OWNER"},
		{name: "filter", w: 80, h: 20, keys: []string{"/", "type:run"}, wait: "ci-runner"},
		{name: "detail", w: 80, h: 24, keys: []string{"j", "j", "enter"}, wait: "login:"},
		{name: "detail_stopped", w: 80, h: 24, keys: []string{"G", "enter"}, wait: "not connected"},
		{name: "create_form", w: 80, h: 20, keys: []string{"n", "type:api"}, wait: "ubuntu-24.04"},
		{name: "create_invalid", w: 80, h: 20, keys: []string{"n", "type:9lives", "enter", "enter", "enter", "enter"}, wait: "starting with a letter"},
		{name: "confirm_destroy", w: 80, h: 20, keys: []string{"j", "j", "d"}, wait: "cannot be undone"},
		{name: "create_form_images", w: 80, h: 20, keys: []string{"n", "tab", "tab", "tab"}, wait: "debian",
			setup: func(f *tuitest.Fake) {
				f.SetImages([]service.ImageInfo{tuitest.Image("debian", true), tuitest.Image("minimal", false), tuitest.Image("nixos", false)})
			}},
		{name: "snapshots", w: 80, h: 20, keys: []string{"j", "j", "p"}, wait: "nightly"},
		{name: "snapshot_form", w: 80, h: 20, keys: []string{"j", "j", "p", "n", "tab", "space"}, wait: "space toggles"},
		{name: "confirm_restore", w: 80, h: 20, keys: []string{"j", "j", "p", "wait:nightly", "enter"}, wait: "resumes running"},
		{name: "resize_form", w: 80, h: 20, keys: []string{"j", "j", "z"}, wait: "Disk"},
		{name: "help", w: 80, h: 24, keys: []string{"?"}, wait: "returns to the dashboard"},
		{name: "small", w: 60, h: 15, keys: []string{"j"}, wait: "› db"},
		{name: "small_detail", w: 60, h: 15, keys: []string{"j", "j", "enter"}, wait: "Agent"},
		{name: "too_small", w: 30, h: 8, wait: "too small"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tuitest.NewSeeded()
			if tt.setup != nil {
				tt.setup(f)
			}
			opts := testOptions(f, tt.w, tt.h)
			opts.Admin = tt.admin
			m, err := tui.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(tt.w, tt.h))
			// Wait for the first load, then type. WaitFor consumes the
			// output, so tt.wait must be drawn after the keys.
			if len(tt.keys) > 0 {
				teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte("worker")) },
					teatest.WithDuration(5*time.Second))
			}
			for _, k := range tt.keys {
				if s, ok := strings.CutPrefix(k, "wait:"); ok { // until the page has loaded
					teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte(s)) },
						teatest.WithDuration(5*time.Second))
					continue
				}
				if s, ok := strings.CutPrefix(k, "type:"); ok {
					tm.Type(s)
					continue
				}
				tm.Send(keyMsg(k))
			}
			teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte(tt.wait)) },
				teatest.WithDuration(5*time.Second))
			if err := tm.Quit(); err != nil {
				t.Fatal(err)
			}
			final := tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second))
			teatest.RequireEqualOutput(t, []byte(final.View()))
		})
	}
}

// The program must survive a resize in any state.
func TestGoldenResizeWhileOnDetail(t *testing.T) {
	f := tuitest.NewSeeded()
	m, err := tui.New(testOptions(f, 80, 24))
	if err != nil {
		t.Fatal(err)
	}
	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(80, 24))
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte("worker")) })
	tm.Send(keyMsg("j"))
	tm.Send(keyMsg("enter"))
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte("login:")) })
	tm.Send(tea.WindowSizeMsg{Width: 50, Height: 12})
	tm.Send(keyMsg("esc"))
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte("UPTIME")) })
	tm.Quit()
	teatest.RequireEqualOutput(t, []byte(tm.FinalModel(t, teatest.WithFinalTimeout(5*time.Second)).View()))
}
