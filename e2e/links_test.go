package e2e

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// linkClient is a browser for the daemon's local proxy: every request goes
// to httpAddr whatever the host (<vm>.localhost), with its own cookie jar,
// following the sign-in redirect.
func linkClient(httpAddr string) *http.Client {
	jar, _ := cookiejar.New(nil)
	tr := &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, httpAddr)
	}}
	return &http.Client{Transport: tr, Jar: jar, Timeout: 60 * time.Second}
}

// TestLinkLifecycle is issue 11's proof that links and sessions end with
// the VM they were made for, on real VMs behind the real daemon's proxy:
// a used one-time sign-in link stays used across a daemon restart;
// `share --private` ends an outstanding share link and the sessions it
// made; and after A renames web and B creates a private web, A's old link
// and its sessions do not open B's VM.
func TestLinkLifecycle(t *testing.T) {
	setup(t)
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("ssh is not installed")
	}
	dir := t.TempDir()
	bob := newSSHKey(t, dir, "bob")
	must(t, "user", "add", "bob", "--ssh-key", bob.pubFile)
	t.Cleanup(func() {
		minions(t, "", "destroy", "web-a", "--yes")
		minions(t, "", "destroy", "web", "--yes")
		minions(t, "", "user", "rm", "bob", "--yes")
	})
	httpAddr := freePort(t)
	d := startDaemon(t, dir, "", "--http-bind", httpAddr)
	t.Cleanup(func() { d.stop(t) }) // d changes when the daemon restarts
	_, port, _ := net.SplitHostPort(httpAddr)
	home := "http://web.localhost:" + port + "/"

	// A (root) creates web and serves a page from it.
	var a vmJSON
	mustJSON(t, &a, "create", "web")
	pageA := "page of A " + a.ID
	must(t, "exec", "web", "--", "sh", "-c", "mkdir -p /www && echo '"+pageA+"' > /www/index.html && httpd -p 80 -h /www")

	open := func(c *http.Client, u string) (int, string) {
		t.Helper()
		resp, err := c.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, strings.TrimSpace(string(b))
	}

	t.Run("one-time-link-used-before-restart-is-refused-after", func(t *testing.T) {
		var w webJSON
		mustJSON(t, &w, "share", "web")
		if w.LoginURL == "" {
			t.Fatalf("share: %+v", w)
		}
		if code, body := open(linkClient(httpAddr), w.LoginURL); code != 200 || body != pageA {
			t.Fatalf("sign-in link: %d %q", code, body)
		}
		d.stop(t)
		d = startDaemon(t, dir, "", "--http-bind", httpAddr)
		waitListening(t, httpAddr, 30*time.Second)
		if code, body := open(linkClient(httpAddr), w.LoginURL); code != http.StatusForbidden || !strings.Contains(body, "already used") {
			t.Fatalf("used sign-in link after a daemon restart: %d %q", code, body)
		}
	})

	t.Run("share-private-ends-share-links-and-their-sessions", func(t *testing.T) {
		var w webJSON
		mustJSON(t, &w, "share", "web", "--link", "--ttl", "1h")
		guest := linkClient(httpAddr)
		if code, body := open(guest, w.ShareURL); code != 200 || body != pageA {
			t.Fatalf("share link: %d %q", code, body)
		}
		if code, body := open(guest, home); code != 200 || body != pageA {
			t.Fatalf("share session: %d %q", code, body)
		}
		mustJSON(t, &w, "share", "web", "--private") // already private: still revokes
		if code, body := open(guest, home); code != http.StatusUnauthorized || strings.Contains(body, pageA) {
			t.Fatalf("share session after share --private: %d %q", code, body)
		}
		old := w.ShareURL
		mustJSON(t, &w, "share", "web", "--link", "--ttl", "1h")
		if code, body := open(linkClient(httpAddr), old); code != http.StatusForbidden || strings.Contains(body, pageA) {
			t.Fatalf("share link after share --private: %d %q", code, body)
		}
		if code, body := open(linkClient(httpAddr), w.ShareURL); code != 200 || body != pageA {
			t.Fatalf("new share link: %d %q", code, body)
		}
	})

	t.Run("old-link-does-not-open-a-recycled-name", func(t *testing.T) {
		var w webJSON
		mustJSON(t, &w, "share", "web", "--link", "--ttl", "1h")
		guest := linkClient(httpAddr)
		if code, body := open(guest, w.ShareURL); code != 200 || body != pageA {
			t.Fatalf("share link: %d %q", code, body)
		}
		// A renames web; B creates a private web of their own.
		must(t, "rename", "web", "web-a")
		r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "create", "web", "--json")
		if r.code != 0 {
			t.Fatalf("bob creates web: %s", r)
		}
		var b vmJSON
		if err := jsonUnmarshal(r.stdout, &b); err != nil || b.ID == a.ID {
			t.Fatalf("bob's web: %+v %v", b, err)
		}
		pageB := "page of B " + b.ID
		if r := d.openssh(t, bob, "", "ssh", "127.0.0.1", "exec", "web", "--", "sh", "-c",
			"'mkdir -p /www && echo \""+pageB+"\" > /www/index.html && httpd -p 80 -h /www'"); r.code != 0 {
			t.Fatalf("bob's page: %s", r)
		}
		waitHTTP(t, "http://"+b.IP+"/", pageB)
		for name, c := range map[string]*http.Client{"old session": guest, "old link, new visitor": linkClient(httpAddr)} {
			u := home
			if name != "old session" {
				u = w.ShareURL
			}
			code, body := open(c, u)
			if code == 200 || strings.Contains(body, pageB) || strings.Contains(body, pageA) {
				t.Fatalf("%s reaches bob's private web: %d %q", name, code, body)
			}
		}
		// Bob's own sign-in link works.
		r = d.openssh(t, bob, "", "ssh", "127.0.0.1", "share", "web", "--json")
		var bw webJSON
		if err := jsonUnmarshal(r.stdout, &bw); r.code != 0 || err != nil || bw.LoginURL == "" {
			t.Fatalf("bob's share: %s", r)
		}
		if code, body := open(linkClient(httpAddr), bw.LoginURL); code != 200 || body != pageB {
			t.Fatalf("bob signs in: %d %q", code, body)
		}
	})
}
