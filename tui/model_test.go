package tui_test

import (
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/tui/tuitest"
)

func TestOptionsValidate(t *testing.T) {
	f := tuitest.New()
	tests := []struct {
		name string
		opts tui.Options
		ok   bool
	}{
		{"defaults", tui.Options{Backend: f}, true},
		{"no backend", tui.Options{}, false},
		{"negative size", tui.Options{Backend: f, Width: -1}, false},
		{"refresh too fast", tui.Options{Backend: f, Refresh: 1}, false},
		{"refresh off", tui.Options{Backend: f, Refresh: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.opts.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && errs.ClassOf(err) != errs.InvalidArgument {
				t.Fatalf("class = %v, want invalid argument", errs.ClassOf(err))
			}
			if _, err := tui.New(tt.opts); (err == nil) != tt.ok {
				t.Fatalf("New() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

// The seeded VMs sort as ci-runner, db, web, worker.
func TestUpdate(t *testing.T) {
	unavailable := errs.New(errs.Unavailable, "engine busy")
	tests := []struct {
		name      string
		setup     func(*tuitest.Fake)
		keys      []string
		wantCalls []string
		want      []string // substrings of the final view
		notWant   []string
		wantQuit  bool
	}{
		{name: "list shows vms", want: []string{"ci-runner", "db", "web", "worker", "10.77.0.2", "4h4m"}},
		{name: "open detail", keys: []string{"j", "j", "enter"},
			want: []string{"minions web", "https://web.minions.test", "before-upgrade", "minions-agent: ready", "connected"}},
		{name: "detail shows restart policy and recent events", setup: func(f *tuitest.Fake) {
			f.SetOps("web", "on-failure", 2, []service.Event{
				{At: time.Date(2026, 12, 5, 7, 0, 0, 0, time.UTC), Actor: "host", Kind: "crashed", Message: "hypervisor exited"},
				{At: time.Date(2026, 12, 5, 7, 0, 1, 0, time.UTC), Actor: "host", Kind: "restarted"}})
		}, keys: []string{"j", "j", "enter"},
			want: []string{"Restart", "on-failure", "Recent events", "2026-12-05 07:00:00 · host · crashed hypervisor exited", "host · restarted"}},
		{name: "esc back from detail", keys: []string{"j", "enter", "esc"}, want: []string{"NAME", "worker"}},
		{name: "G goes to bottom, stop ignored on stopped", keys: []string{"G", "x"}, wantCalls: nil, want: []string{"s start"}},
		{name: "start stopped vm", keys: []string{"G", "s"}, wantCalls: []string{"Start worker"}, want: []string{"started worker"}},
		{name: "stop running vm", keys: []string{"j", "j", "x"}, wantCalls: []string{"Stop web"}, want: []string{"stopped web"}},
		{name: "restart", keys: []string{"r"}, wantCalls: []string{"Restart ci-runner"}, want: []string{"restarted ci-runner"}},
		{name: "backend error on status line", setup: func(f *tuitest.Fake) { f.Fail("Stop", unavailable) },
			keys: []string{"x"}, wantCalls: []string{"Stop ci-runner"}, want: []string{"stop ci-runner: unavailable, try again: engine busy"}},
		{name: "list error on status line", setup: func(f *tuitest.Fake) { f.Fail("List", errs.New(errs.PermissionDenied, "no")) },
			want: []string{"list: not allowed: no"}},
		{name: "destroy cancelled", keys: []string{"d", "n"}, want: []string{"cancelled", "ci-runner"}},
		{name: "destroy confirmed", keys: []string{"d", "y"}, wantCalls: []string{"Destroy ci-runner"},
			want: []string{"destroyed ci-runner"}, notWant: []string{"10.77.0.5"}},
		{name: "destroy from detail returns to list", keys: []string{"j", "j", "enter", "d", "y"},
			wantCalls: []string{"Destroy web"}, want: []string{"NAME", "destroyed web"}},
		{name: "filter", keys: []string{"/", "type:wor", "enter"}, want: []string{"worker", "(1 of 4)"}, notWant: []string{"ci-runner"}},
		{name: "filter typing q does not quit", keys: []string{"/", "type:q"}, want: []string{"No VM matches \"q\""}},
		{name: "filter cleared by esc", keys: []string{"/", "type:wor", "esc"}, want: []string{"ci-runner", "worker"}},
		{name: "quit", keys: []string{"q"}, wantQuit: true},
		{name: "ctrl+c quits from a form", keys: []string{"n", "ctrl+c"}, wantQuit: true},
		{name: "help", keys: []string{"?"}, want: []string{"Keys", "destroy", "ctrl+] returns"}},
		{name: "help closes", keys: []string{"?", "esc"}, want: []string{"NAME"}},
		{name: "create", keys: []string{"n", "type:api", "enter", "ctrl+u", "type:2", "enter", "enter", "right", "enter"},
			wantCalls: []string{"Create api"}, want: []string{"minions api", "created api", "ubuntu-24.04", "CPUs     2"}},
		{name: "create form preselects the backend's default", setup: func(f *tuitest.Fake) {
			f.SetImages([]service.ImageInfo{tuitest.Image("minimal", false), tuitest.Image("debian", true)})
		}, keys: []string{"n"}, want: []string{"[debian]", "minimal"}, notWant: []string{"[minimal]"}},
		{name: "create with the default image", setup: func(f *tuitest.Fake) {
			f.SetImages([]service.ImageInfo{tuitest.Image("minimal", false), tuitest.Image("debian", true)})
		}, keys: []string{"n", "type:api", "enter", "enter", "enter", "enter"},
			wantCalls: []string{"Create api"}, want: []string{"created api", "debian"}},
		{name: "create form when images cannot be listed", setup: func(f *tuitest.Fake) { f.Fail("Images", errs.New(errs.Unavailable, "old daemon")) },
			keys:      []string{"n", "type:api", "enter", "enter", "enter", "type:nixos", "enter"},
			wantCalls: []string{"Create api"}, want: []string{"created api", "nixos"}},
		{name: "create rejects bad name", keys: []string{"n", "type:Bad_Name", "enter", "enter", "enter", "enter"},
			want: []string{"lowercase letters, digits and -"}},
		{name: "create rejects bad memory", keys: []string{"n", "type:ok", "tab", "tab", "ctrl+u", "type:12", "enter", "enter"},
			want: []string{"a whole number from 128 to 262144 MiB"}},
		{name: "create duplicate shows error, stays on form", keys: []string{"n", "type:web", "enter", "enter", "enter", "enter"},
			wantCalls: []string{"Create web"}, want: []string{"create web: already exists", "Create a VM"}},
		{name: "rename from detail follows the vm", keys: []string{"j", "j", "enter", "e", "ctrl+u", "type:www", "enter"},
			wantCalls: []string{"Rename web www"}, want: []string{"minions www", "renamed web to www", "https://www.minions.test"}},
		{name: "copy", keys: []string{"j", "j", "y", "enter"}, wantCalls: []string{"Copy web web-copy"},
			want: []string{"copied web to web-copy", "web-copy"}},
		{name: "fork", keys: []string{"j", "j", "f", "enter"}, wantCalls: []string{"Fork web web-fork"},
			want: []string{"forked web to web-fork", "web-fork"}},
		{name: "fork named", keys: []string{"j", "j", "f", "ctrl+u", "type:twin", "enter"}, wantCalls: []string{"Fork web twin"},
			want: []string{"forked web to twin"}},
		{name: "fork of a stopped vm is not offered", keys: []string{"G", "f"}, want: []string{"worker"}},
		{name: "resize changes only what changed", keys: []string{"j", "j", "z", "ctrl+u", "type:4", "enter", "enter", "enter"},
			wantCalls: []string{"Resize web cpus=4 mem=0 disk=0"}, want: []string{"resized web"}},
		{name: "resize nothing", keys: []string{"z", "enter", "enter", "enter"}, want: []string{"nothing to change"}},
		{name: "snapshots list", keys: []string{"j", "j", "p"}, want: []string{"Snapshots of web", "before-upgrade", "disk+memory", "12.0MiB"}},
		{name: "snapshot take", keys: []string{"j", "j", "p", "n", "ctrl+u", "type:pre-deploy", "enter", "enter"},
			wantCalls: []string{"SnapshotCreate web pre-deploy"}, want: []string{"pre-deploy", "snapshot taken of web (disk pre-deploy)"}},
		{name: "snapshot form offers memory", keys: []string{"j", "j", "p", "n", "tab"},
			want: []string{"Kind", "[disk]", "disk+memory", "space toggles"}},
		{name: "memory snapshot take", keys: []string{"j", "j", "p", "n", "ctrl+u", "type:warm", "tab", "space", "enter"},
			wantCalls: []string{"SnapshotCreate web warm memory"}, want: []string{"snapshot taken of web (disk+memory warm)"}},
		{name: "memory snapshot listed as disk+memory", keys: []string{"j", "j", "p", "n", "ctrl+u", "type:warm", "tab", "space", "enter", "G"},
			wantCalls: []string{"SnapshotCreate web warm memory"}, want: []string{"warm", "8.0MiB disk+memory"}},
		{name: "memory snapshot of a stopped vm", keys: []string{"G", "p", "n", "tab", "right", "enter"},
			wantCalls: []string{"SnapshotCreate worker snap-20250301-130000 memory"}, want: []string{"snapshot worker: not now: a memory snapshot needs a running vm"}},
		{name: "snapshot restore confirm says disk and memory", keys: []string{"j", "j", "p", "enter"},
			want: []string{"Restore web from before-upgrade", "(disk+memory)?", "resumes running"}},
		{name: "snapshot restore confirm says disk only", keys: []string{"j", "j", "p", "j", "enter"},
			want: []string{"Restore web from nightly (disk)?", "disk only"}},
		{name: "snapshot restore confirmed", keys: []string{"j", "j", "p", "enter", "y"},
			wantCalls: []string{"SnapshotRestore web before-upgrade"}, want: []string{"restored web (disk+memory snapshot before-upgrade)"}},
		{name: "snapshot delete", keys: []string{"j", "j", "p", "j", "d", "y"},
			wantCalls: []string{"SnapshotDelete web nightly"}, notWant: []string{"nightly"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tuitest.NewSeeded()
			if tt.setup != nil {
				tt.setup(f)
			}
			d := newDriver(t, newModel(t, f, 100, 30))
			d.keys(tt.keys...)
			if d.quit != tt.wantQuit {
				t.Fatalf("quit = %v, want %v", d.quit, tt.wantQuit)
			}
			if got := f.Calls(); strings.Join(got, "|") != strings.Join(tt.wantCalls, "|") {
				t.Errorf("calls = %q, want %q", got, tt.wantCalls)
			}
			if tt.wantQuit {
				return
			}
			v := d.view()
			for _, w := range tt.want {
				if !strings.Contains(v, w) {
					t.Errorf("view lacks %q:\n%s", w, v)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(v, w) {
					t.Errorf("view has %q:\n%s", w, v)
				}
			}
		})
	}
}

func TestResize(t *testing.T) {
	f := tuitest.NewSeeded()
	d := newDriver(t, newModel(t, f, 100, 30))
	tests := []struct {
		w, h    int
		want    []string
		notWant []string
	}{
		{100, 30, []string{"UPTIME", "MEMORY", "CPUS", "IP"}, nil},
		{60, 15, []string{"NAME", "STATUS", "IP", "CPUS", "MEMORY", "UPTIME"}, nil},
		{50, 15, []string{"NAME", "STATUS", "IP", "UPTIME"}, []string{"MEMORY", "CPUS"}},
		{45, 12, []string{"NAME", "STATUS"}, []string{"IP  "}},
		{30, 8, []string{"Terminal too small (30x8)"}, []string{"NAME"}},
		// A client that reports no size gets 80x24 (issue 12 item 6).
		{0, 0, []string{"NAME", "STATUS", "IP", "CPUS", "MEMORY", "UPTIME"}, []string{"too small"}},
	}
	for _, tt := range tests {
		d.send(tea.WindowSizeMsg{Width: tt.w, Height: tt.h})
		v := d.view()
		if tt.w == 0 && tt.h == 0 {
			tt.w, tt.h = tui.DefaultWidth, tui.DefaultHeight
		}
		lines := strings.Split(v, "\n")
		if len(lines) != tt.h {
			t.Errorf("%dx%d: %d lines", tt.w, tt.h, len(lines))
		}
		for _, l := range lines {
			if w := len([]rune(l)); w > tt.w {
				t.Errorf("%dx%d: line %q is %d wide", tt.w, tt.h, l, w)
			}
		}
		for _, w := range tt.want {
			if !strings.Contains(v, w) {
				t.Errorf("%dx%d: view lacks %q:\n%s", tt.w, tt.h, w, v)
			}
		}
		for _, w := range tt.notWant {
			if strings.Contains(v, w) {
				t.Errorf("%dx%d: view has %q:\n%s", tt.w, tt.h, w, v)
			}
		}
	}
}
