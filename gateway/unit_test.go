package gateway

import (
	"errors"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/minionsdev/minions/internal/errs"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for valid
	}{
		{"defaults", Config{HostKeyPath: "/k"}, ""},
		{"no host key", Config{}, "host key path is required"},
		{"bad bind", Config{HostKeyPath: "/k", Bind: "2222"}, "bind"},
		{"open", Config{HostKeyPath: "/k", Policy: PolicyOpen}, ""},
		{"invite with code", Config{HostKeyPath: "/k", Policy: PolicyInvite, InviteCode: "x"}, ""},
		{"invite without code", Config{HostKeyPath: "/k", Policy: PolicyInvite}, "needs an invite code"},
		{"code without invite", Config{HostKeyPath: "/k", Policy: PolicyOpen, InviteCode: "x"}, "invite code set"},
		{"unknown policy", Config{HostKeyPath: "/k", Policy: "maybe"}, "want open, invite or closed"},
		{"negative rate", Config{HostKeyPath: "/k", AuthRate: -1}, "must not be negative"},
		{"negative grace", Config{HostKeyPath: "/k", ShutdownGrace: -time.Second}, "must not be negative"},
		{"idle disabled", Config{HostKeyPath: "/k", IdleTimeout: -1}, ""},
		{"limits disabled", Config{HostKeyPath: "/k", MaxConnections: -1, MaxConnectionsPerSource: -1, MaxUnauthenticated: -1,
			MaxUnauthenticatedPerSource: -1, MaxSessionsPerUser: -1, LoginGrace: -1}, ""},
		{"per source over global", Config{HostKeyPath: "/k", MaxConnections: 10, MaxConnectionsPerSource: 20}, "exceeds max connections"},
		{"unauth per source over global", Config{HostKeyPath: "/k", MaxUnauthenticated: 5, MaxUnauthenticatedPerSource: 6}, "exceeds max unauthenticated"},
		{"defaulted per source follows a small global", Config{HostKeyPath: "/k", MaxUnauthenticated: 5, MaxConnections: 3}, ""},
		{"tiny login grace", Config{HostKeyPath: "/k", LoginGrace: time.Millisecond}, "at least 1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, errs.InvalidArgument) {
				t.Fatalf("error %v, want InvalidArgument containing %q", err, tt.want)
			}
		})
	}
	d := Config{}.withDefaults()
	if d.Bind != "0.0.0.0:2222" || d.Policy != PolicyClosed || d.AuthRate != 10 || d.IdleTimeout != time.Hour || d.Log == nil ||
		d.MaxConnections != 1000 || d.MaxConnectionsPerSource != 50 || d.MaxUnauthenticated != 100 ||
		d.MaxUnauthenticatedPerSource != 10 || d.LoginGrace != 30*time.Second || d.MaxSessionsPerUser != 50 {
		t.Fatalf("defaults %+v", d)
	}
}

func TestFailureLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	l := newFailureLimiter(3, time.Minute, func() time.Time { return now })
	type step struct {
		advance time.Duration
		fail    string // ip to record a failure for
		ip      string // ip to check
		blocked time.Duration
	}
	steps := []step{
		{ip: "a", blocked: 0},
		{fail: "a", ip: "a", blocked: 0},
		{advance: 10 * time.Second, fail: "a", ip: "a", blocked: 0},
		{advance: 10 * time.Second, fail: "a", ip: "a", blocked: 40 * time.Second}, // failures at 0,10,20s: free at 60s
		{ip: "b", blocked: 0},                                                      // other ips unaffected
		{advance: 30 * time.Second, ip: "a", blocked: 10 * time.Second},            // at 50s
		{advance: 10 * time.Second, ip: "a", blocked: 0},                           // at 60s the first left the window
		{fail: "a", ip: "a", blocked: 10 * time.Second},                            // 10,20,60: unblocked at 70s
		{advance: 2 * time.Minute, ip: "a", blocked: 0},                            // all expired
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		if s.fail != "" {
			l.Fail(s.fail)
		}
		if got := l.Blocked(s.ip); got != s.blocked {
			t.Fatalf("step %d: blocked(%s) = %v, want %v", i, s.ip, got, s.blocked)
		}
	}
	if len(l.failures) != 0 {
		t.Fatalf("state kept after expiry: %v", l.failures)
	}
	off := newFailureLimiter(0, time.Minute, nil)
	for i := 0; i < 100; i++ {
		off.Fail("x")
	}
	if off.Blocked("x") != 0 {
		t.Fatal("a disabled limiter blocked")
	}
}

func TestRegisterModel(t *testing.T) {
	keys := func(s string) []tea.Msg {
		var msgs []tea.Msg
		for _, r := range s {
			switch r {
			case '\r':
				msgs = append(msgs, tea.KeyMsg{Type: tea.KeyEnter})
			case '\b':
				msgs = append(msgs, tea.KeyMsg{Type: tea.KeyBackspace})
			default:
				msgs = append(msgs, tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}})
			}
		}
		return msgs
	}
	tests := []struct {
		name     string
		policy   string
		input    string
		result   error // what register returns
		wantName string
		wantInv  string
		wantStep registerStep
		wantView string
		wantQuit bool
	}{
		{name: "open: name then submit", policy: PolicyOpen, input: "bobx\b\r", wantName: "bob", wantStep: stepDone, wantView: "Registered as bob", wantQuit: true},
		{name: "empty name refused", policy: PolicyOpen, input: "\r", wantStep: stepName, wantView: "pick a name"},
		{name: "invite asks for the code", policy: PolicyInvite, input: "bob\rs3\r", wantName: "bob", wantInv: "s3", wantStep: stepDone, wantQuit: true},
		{name: "invite is hidden", policy: PolicyInvite, input: "bob\rs3", wantStep: stepInvite, wantView: "invite: ••"},
		{name: "wrong invite retries the code", policy: PolicyInvite, input: "bob\rxx\r", result: errs.New(errs.PermissionDenied, "wrong invite code"), wantName: "bob", wantInv: "xx", wantStep: stepInvite, wantView: "wrong invite code"},
		{name: "taken name retries the name", policy: PolicyOpen, input: "bob\r", result: errs.New(errs.AlreadyExists, "user bob already exists"), wantName: "bob", wantStep: stepName, wantView: "already exists"},
		{name: "rate limited quits", policy: PolicyInvite, input: "bob\rxx\r", result: errs.New(errs.ResourceExhausted, "too many failed authentication attempts"), wantName: "bob", wantInv: "xx", wantStep: stepDone, wantView: "too many failed", wantQuit: true},
		{name: "closed only explains", policy: PolicyClosed, input: "abc", wantStep: stepClosed, wantView: "Sign-up is closed"},
		{name: "closed q quits", policy: PolicyClosed, input: "q", wantStep: stepClosed, wantQuit: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotName, gotInv string
			m := tea.Model(newRegisterModel(lipgloss.NewRenderer(nil), tt.policy, "SHA256:abc", func(name, invite string) (User, error) {
				gotName, gotInv = name, invite
				if tt.result != nil {
					return User{}, tt.result
				}
				return User{Name: name}, nil
			}))
			quit := false
			for _, msg := range keys(tt.input) {
				var cmd tea.Cmd
				m, cmd = m.Update(msg)
				// Run commands synchronously (register calls, quit).
				for cmd != nil {
					res := cmd()
					if _, ok := res.(tea.QuitMsg); ok {
						quit = true
						break
					}
					m, cmd = m.Update(res)
				}
			}
			rm := m.(registerModel)
			if gotName != tt.wantName || gotInv != tt.wantInv {
				t.Errorf("register(%q, %q), want (%q, %q)", gotName, gotInv, tt.wantName, tt.wantInv)
			}
			if rm.step != tt.wantStep {
				t.Errorf("step %d, want %d", rm.step, tt.wantStep)
			}
			if quit != tt.wantQuit {
				t.Errorf("quit %v, want %v", quit, tt.wantQuit)
			}
			if v := rm.View(); !strings.Contains(v, tt.wantView) || !strings.Contains(v, "SHA256:abc") {
				t.Errorf("view lacks %q:\n%s", tt.wantView, v)
			}
		})
	}
}
