package tui_test

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/charmbracelet/x/exp/teatest"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/tui/tuitest"
)

// TestHostsView drives the hosts view synchronously: admins open it with
// h and see every host's state, use against capacity, heartbeat age and
// version; c and u cordon and uncordon after a confirmation; esc goes
// back; a non-admin gets a message and the backend is never asked.
// The seeded hosts are cp, node1, node2 (cordoned), node3 (unreachable),
// node4 (joining).
func TestHostsView(t *testing.T) {
	tests := []struct {
		name      string
		user      bool // a non-admin (no host call may be made)
		setup     func(*tuitest.Fake)
		keys      []string
		wantCalls []string // when set, exactly these calls
		want      []string
		notWant   []string
		check     func(*testing.T, *tuitest.Fake)
	}{
		{name: "admin opens hosts", keys: []string{"h"}, wantCalls: []string{"HostList"},
			want: []string{"minions hosts", "Hosts  (5)", "HEARTBEAT", "cp", "local", "7/8", "5.5G/16G", "55G/500G", "2s ago",
				"192.0.2.11", "2/16", "cordoned", "0.8.2", "unreachable", "3m ago", "joining", "never",
				"cp · ready · local · subnet 10.77.0.0/24 · 3 vm(s) · cpu 7/8 · memory 5.5G/16G (9G free) · disk 55G/500G (400G free) · heartbeat 2s ago · version 0.9.0",
				"c cordon", "esc back"}},
		{name: "a user gets a message and no data", user: true, keys: []string{"h"}, wantCalls: nil,
			want: []string{"hosts: only admins see the cluster's hosts", "ci-runner"}, notWant: []string{"node1", "HEARTBEAT"}},
		{name: "cordon after yes", keys: []string{"h", "j", "c"}, want: []string{"Cordon host node1?", "Its 1 VM(s) keep"}},
		{name: "cordon confirmed", keys: []string{"h", "j", "c", "y"}, wantCalls: []string{"HostList", "HostCordon node1", "HostList"},
			want: []string{"cordoned host node1", "node1 · cordoned", "u uncordon"},
			check: func(t *testing.T, f *tuitest.Fake) {
				if h, _ := f.Host("node1"); !h.Cordoned || h.State != "cordoned" {
					t.Errorf("node1 after cordon: %+v", h)
				}
			}},
		{name: "cordon cancelled", keys: []string{"h", "j", "c", "n"}, wantCalls: []string{"HostList"},
			want: []string{"cancelled", "node1 · ready"}},
		{name: "c on a cordoned host does nothing", keys: []string{"h", "j", "j", "c"}, wantCalls: []string{"HostList"},
			want: []string{"node2 · cordoned", "u uncordon"}, notWant: []string{"Cordon host"}},
		{name: "uncordon confirmed", keys: []string{"h", "j", "j", "u", "y"}, wantCalls: []string{"HostList", "HostUncordon node2", "HostList"},
			want: []string{"uncordoned host node2", "node2 · ready"}},
		{name: "u on a ready host does nothing", keys: []string{"h", "u"}, wantCalls: []string{"HostList"}, notWant: []string{"Uncordon host"}},
		{name: "cordon refused shows why", keys: []string{"h", "G", "c", "y"}, wantCalls: []string{"HostList", "HostCordon node4", "HostList"},
			want: []string{"cordon host node4: not now: host node4 has not joined yet"}},
		{name: "esc goes back", keys: []string{"h", "esc"}, wantCalls: []string{"HostList"},
			want: []string{"UPTIME", "ci-runner"}, notWant: []string{"HEARTBEAT", "Hosts  (5)"}},
		{name: "list error shown", setup: func(f *tuitest.Fake) {
			f.Fail("HostList", errs.New(errs.PermissionDenied, "only admins may list hosts"))
		},
			keys: []string{"h"}, wantCalls: []string{"HostList"}, want: []string{"not allowed: only admins may list hosts"}, notWant: []string{"node1"}},
		{name: "no hosts", setup: func(f *tuitest.Fake) { f.SetHosts(nil) }, keys: []string{"h"},
			want: []string{"No hosts yet. Add one with: minions host add NAME"}},
		{name: "help lists the host keys", keys: []string{"h", "?"}, want: []string{"cordon", "uncordon"}},
		{name: "list footer offers h to admins", want: []string{"h hosts"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tuitest.NewSeeded()
			f.SetHosts(tuitest.Hosts())
			if tt.setup != nil {
				tt.setup(f)
			}
			opts := testOptions(f, 160, 24)
			opts.Admin = !tt.user
			m, err := tui.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			d := newDriver(t, m)
			d.keys(tt.keys...)
			view := d.view()
			if got := f.Calls(); (tt.wantCalls != nil || tt.user) && !reflect.DeepEqual(got, tt.wantCalls) {
				t.Errorf("calls = %q, want %q", got, tt.wantCalls)
			}
			for _, w := range tt.want {
				if !strings.Contains(view, w) {
					t.Errorf("view lacks %q:\n%s", w, view)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(view, w) {
					t.Errorf("view has %q:\n%s", w, view)
				}
			}
			if tt.check != nil {
				tt.check(t, f)
			}
		})
	}
}

// TestHostsViewRefreshes: the hosts view reloads on the live refresh, so
// a host that joins appears without a key press (the real program).
func TestHostsViewRefreshes(t *testing.T) {
	f := tuitest.NewSeeded()
	f.SetHosts(tuitest.Hosts())
	opts := testOptions(f, 120, 20)
	opts.Admin = true
	opts.Refresh = 100 * time.Millisecond
	m, err := tui.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(120, 20))
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte("worker")) }, teatest.WithDuration(5*time.Second))
	tm.Send(keyMsg("h"))
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte("node4")) }, teatest.WithDuration(5*time.Second))
	f.SetHosts(append(tuitest.Hosts(), service.Host{ID: "0000000000c9", Name: "node9", Address: "192.0.2.19", State: "ready",
		CPUs: 2, MemoryMiB: 2048, LastHeartbeat: f.Now()}))
	teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte("192.0.2.19")) }, teatest.WithDuration(5*time.Second))
	if err := tm.Quit(); err != nil {
		t.Fatal(err)
	}
	tm.WaitFinished(t, teatest.WithFinalTimeout(5*time.Second))
}

// TestGoldenHosts compares the hosts view's frames with
// testdata/TestGoldenHosts/<name>.golden (regenerate with -update).
func TestGoldenHosts(t *testing.T) {
	tests := []struct {
		name  string
		w, h  int
		admin bool
		keys  []string
		wait  string
	}{
		{name: "hosts", w: 120, h: 16, admin: true, keys: []string{"h"}, wait: "node4"},
		{name: "hosts_narrow", w: 70, h: 16, admin: true, keys: []string{"h", "wait:node4", "j", "j", "j"}, wait: "node3 · unreachable"},
		{name: "confirm_cordon", w: 80, h: 16, admin: true, keys: []string{"h", "wait:node4", "j", "c"}, wait: "Its 1 VM(s) keep"},
		{name: "list_admin_hosts_key", w: 140, h: 10, admin: true, wait: "h hosts"},
		{name: "not_admin", w: 80, h: 12, keys: []string{"h"}, wait: "only admins"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := tuitest.NewSeeded()
			f.SetHosts(tuitest.Hosts())
			opts := testOptions(f, tt.w, tt.h)
			opts.Admin = tt.admin
			m, err := tui.New(opts)
			if err != nil {
				t.Fatal(err)
			}
			tm := teatest.NewTestModel(t, m, teatest.WithInitialTermSize(tt.w, tt.h))
			if len(tt.keys) > 0 {
				teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte("worker")) },
					teatest.WithDuration(5*time.Second))
			}
			for _, k := range tt.keys {
				if s, ok := strings.CutPrefix(k, "wait:"); ok {
					teatest.WaitFor(t, tm.Output(), func(b []byte) bool { return bytes.Contains(b, []byte(s)) },
						teatest.WithDuration(5*time.Second))
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
