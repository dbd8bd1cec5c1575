package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/testenv"
)

// TestSignUpThroughDaemon signs up over SSH through the real daemon (its
// gateway adapter in front of the service and the store) with Debian's
// OpenSSH client in a real terminal, for each sign-up policy: open (a name
// is enough), invite (a wrong code is refused and retried, the right one
// registers) and closed (nothing registers). A registered key is then its
// user on a new connection and in the host's user list.
func TestSignUpThroughDaemon(t *testing.T) {
	setup(t)
	if _, err := exec.LookPath("ssh"); err != nil {
		testenv.SkipUnlessCI(t, "ssh is not installed")
	}
	for _, tc := range []struct{ policy, user, invite string }{
		{"open", "signup-open", ""},
		{"invite", "signup-invite", "sesame-42"},
		{"closed", "signup-closed", ""},
	} {
		t.Run(tc.policy, func(t *testing.T) {
			dir := t.TempDir()
			k := newSSHKey(t, dir, tc.user)
			extra := []string{"--policy", tc.policy}
			if tc.invite != "" {
				extra = append(extra, "--invite-code", tc.invite)
			}
			d := startDaemon(t, dir, "", extra...)
			t.Cleanup(func() { d.stop(t) })
			t.Cleanup(func() { minions(t, "", "user", "rm", tc.user, "--yes") })

			// Unknown key, no terminal: exit 10 and what to do.
			r := d.openssh(t, k, "", "ssh", "127.0.0.1", "whoami")
			if r.code != 10 || !strings.Contains(r.stderr, "not registered") {
				t.Fatalf("whoami with an unknown key: %s", r)
			}
			if tc.policy == "closed" && !strings.Contains(r.stderr, "sign-up is closed") {
				t.Fatalf("whoami with an unknown key, sign-up closed: %s", r)
			}

			term := d.dashboard(t, dir, k)
			if tc.policy == "closed" {
				term.waitText(30*time.Second, "Sign-up is closed")
				term.typ("q")
				term.waitFor("client exit", 30*time.Second, func(string) bool { return term.dead() })
				if users := userNames(t); strings.Contains(users, tc.user) {
					t.Fatalf("closed sign-up registered a user: %s", users)
				}
				return
			}
			term.waitText(30*time.Second, "Pick a user name")
			term.typ(tc.user)
			term.keys("Enter")
			if tc.invite != "" {
				term.waitText(30*time.Second, "invite:")
				term.typ("not-the-code")
				term.keys("Enter")
				term.waitText(30*time.Second, "wrong invite code")
				if users := userNames(t); strings.Contains(users, tc.user) {
					t.Fatalf("a wrong invite code registered the user: %s", users)
				}
				term.typ(tc.invite)
				term.keys("Enter")
			}
			// Registered: the dashboard opens for the new user.
			term.waitFor("the dashboard", 60*time.Second, func(s string) bool {
				return strings.Contains(s, "q quit") && strings.Contains(s, tc.user) && !strings.Contains(s, "Pick a user name")
			})
			term.typ("q")
			term.waitFor("client exit", 30*time.Second, func(string) bool { return term.dead() })

			if r := d.openssh(t, k, "", "ssh", "127.0.0.1", "whoami"); r.code != 0 || strings.TrimSpace(r.stdout) != tc.user+" (user)" {
				t.Fatalf("whoami after sign-up: %s", r)
			}
			if users := userNames(t); !strings.Contains(users, `"`+tc.user+`"`) {
				t.Fatalf("user list after sign-up lacks %s: %s", tc.user, users)
			}
		})
	}
}

// userNames is the host's `minions user list --json` output.
func userNames(t *testing.T) string {
	t.Helper()
	return must(t, "user", "list", "--json")
}
