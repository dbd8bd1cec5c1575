package proxytest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Browser is a real headless Chromium with its own profile directory,
// driven over the DevTools protocol on a pipe (--remote-debugging-pipe:
// the browser reads commands on fd 3 and answers on fd 4, NUL-separated
// JSON), so no port is opened and no dependency is needed. It has one tab.
// Not safe for concurrent use.
//
// Chromium is started with what phones home turned off as far as flags
// go, and with a resolver rule that fails every name except *.localhost,
// which Chromium resolves to loopback by itself: the Google services it
// still asks for (sign-in, component updates) fail before any lookup. Its
// network log is checked when it closes: a TCP connection to anything but
// loopback, or any UDP datagram, fails the test.
type Browser struct {
	t       testing.TB
	cmd     *exec.Cmd
	in      *os.File // the browser's fd 3
	out     *os.File // the browser's fd 4
	rd      *bufio.Reader
	stderr  *lockedBuffer
	netlog  string // the browser's network log, written as it exits
	next    int
	session string
	once    sync.Once
}

// Page is what a tab shows once a document has loaded.
type Page struct {
	URL   string // location.href, after redirects
	Title string // document.title
	Text  string // document.body.innerText without surrounding space
}

func (p Page) String() string {
	return fmt.Sprintf("%s (title %q): %q", p.URL, p.Title, p.Text)
}

// ChromiumPath returns the Chromium binary, or skips the test when there
// is none, except in CI (CI=true), where it fails: scripts/deps.sh --test
// installs Debian's chromium package there.
func ChromiumPath(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("chromium is not installed (scripts/deps.sh --test installs it)")
	}
	t.Skip("chromium is not installed: apt-get install chromium (or scripts/deps.sh --test) to run the browser tests")
	return ""
}

// StartBrowser starts headless Chromium with the profile directory
// profile (created if missing; cookies persist there between browsers
// started on the same directory) and attaches to a fresh tab. The browser
// is closed at the end of the test.
func StartBrowser(t testing.TB, profile string) *Browser {
	t.Helper()
	bin := ChromiumPath(t)
	cmdIn, in, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	out, cmdOut, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	b := &Browser{t: t, in: in, out: out, rd: bufio.NewReader(out), stderr: &lockedBuffer{},
		netlog: filepath.Join(t.TempDir(), "netlog.json")}
	b.cmd = exec.Command(bin,
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--remote-debugging-pipe", "--user-data-dir="+profile, "--log-net-log="+b.netlog,
		// Nothing but the test's own pages: no Google services, no
		// updates, no proxy from the environment, no DNS but *.localhost.
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--disable-domain-reliability",
		"--disable-client-side-phishing-detection", "--disable-breakpad", "--no-pings",
		"--disable-quic", "--no-first-run", "--no-default-browser-check", "--metrics-recording-only",
		"--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,CertificateTransparencyComponentUpdater,NetworkTimeServiceQuerying",
		"--no-proxy-server", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE *.localhost",
		"about:blank")
	b.cmd.ExtraFiles = []*os.File{cmdIn, cmdOut}
	b.cmd.Stderr = b.stderr
	if err := b.cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	cmdIn.Close()
	cmdOut.Close()
	t.Cleanup(b.Close)

	var target struct {
		TargetID string `json:"targetId"`
	}
	b.call("", "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var attached struct {
		SessionID string `json:"sessionId"`
	}
	b.call("", "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &attached)
	b.session = attached.SessionID
	return b
}

// Open navigates the tab to url, waits until the document that ends up
// there (after redirects) has loaded, and returns what it shows. Network
// errors fail the test; HTTP error pages are pages.
func (b *Browser) Open(url string) Page {
	b.t.Helper()
	var nav struct {
		ErrorText string `json:"errorText"`
	}
	// Through about:blank, so that what is read below is never the
	// document shown before (which may be at the same URL).
	b.call(b.session, "Page.navigate", map[string]any{"url": "about:blank"}, nil)
	b.call(b.session, "Page.navigate", map[string]any{"url": url}, &nav)
	if nav.ErrorText != "" {
		b.t.Fatalf("chromium: open %s: %s", url, nav.ErrorText)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var res struct {
			Result struct {
				Value string `json:"value"`
			} `json:"result"`
		}
		b.call(b.session, "Runtime.evaluate", map[string]any{"returnByValue": true,
			"expression": `JSON.stringify([location.href, document.readyState, document.title, document.body ? document.body.innerText : ""])`}, &res)
		var v []string
		if err := json.Unmarshal([]byte(res.Result.Value), &v); err != nil || len(v) != 4 {
			b.t.Fatalf("chromium: page state %q: %v", res.Result.Value, err)
		}
		if v[1] == "complete" && v[0] != "about:blank" {
			return Page{URL: v[0], Title: v[2], Text: strings.TrimSpace(v[3])}
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("chromium: %s did not load in time (at %s, %s)", url, v[0], v[1])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close closes the browser cleanly (so it writes its cookies to the
// profile) and waits for it to exit. Idempotent.
func (b *Browser) Close() {
	b.once.Do(func() {
		done := make(chan error, 1)
		go func() { done <- b.cmd.Wait() }()
		_, _ = b.send("", "Browser.close", nil) // fails if it has exited already
		select {
		case <-done:
			b.checkNetLog()
		case <-time.After(20 * time.Second):
			b.t.Errorf("chromium did not exit after Browser.close; killing it\n%s", b.stderr)
			b.cmd.Process.Kill()
			<-done
		}
		b.in.Close()
		b.out.Close()
	})
}

// checkNetLog fails the test if the browser's network log shows a TCP
// connection attempt to an address that is not loopback or any UDP
// datagram sent. (Chromium's IPv6 reachability probe connects a UDP socket
// to a public address without sending on it: that is a route lookup.)
func (b *Browser) checkNetLog() {
	data, err := os.ReadFile(b.netlog)
	if err != nil {
		b.t.Errorf("chromium: network log: %v", err)
		return
	}
	var log struct {
		Constants struct {
			LogEventTypes map[string]int `json:"logEventTypes"`
		} `json:"constants"`
		Events []struct {
			Type   int `json:"type"`
			Params struct {
				Address string `json:"address"`
			} `json:"params"`
		} `json:"events"`
	}
	if err := json.Unmarshal(data, &log); err != nil {
		b.t.Errorf("chromium: network log %s: %v", b.netlog, err)
		return
	}
	types := log.Constants.LogEventTypes
	tcp, udpSent := types["TCP_CONNECT_ATTEMPT"], types["UDP_BYTES_SENT"]
	if tcp == 0 || udpSent == 0 {
		b.t.Errorf("chromium: network log %s lacks the event types it is checked for", b.netlog)
		return
	}
	for _, e := range log.Events {
		switch {
		case e.Type == udpSent:
			b.t.Errorf("chromium sent a UDP datagram (see %s)", b.netlog)
		case e.Type == tcp && e.Params.Address != "":
			host, _, err := net.SplitHostPort(e.Params.Address)
			if ip, perr := netip.ParseAddr(host); err != nil || perr != nil || !ip.IsLoopback() {
				b.t.Errorf("chromium connected to %s, which is not loopback", e.Params.Address)
			}
		}
	}
}

// send writes one command and returns its id.
func (b *Browser) send(session, method string, params any) (int, error) {
	b.next++
	msg := map[string]any{"id": b.next, "method": method}
	if params != nil {
		msg["params"] = params
	}
	if session != "" {
		msg["sessionId"] = session
	}
	data, err := json.Marshal(msg)
	if err != nil {
		b.t.Fatal(err)
	}
	b.in.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err = b.in.Write(append(data, 0))
	return b.next, err
}

// call sends a command and decodes its result into result, skipping the
// events that arrive in between.
func (b *Browser) call(session, method string, params, result any) {
	b.t.Helper()
	id, err := b.send(session, method, params)
	if err != nil {
		b.t.Fatalf("chromium: send %s: %v\nstderr:\n%s", method, err, b.stderr)
	}
	b.out.SetReadDeadline(time.Now().Add(30 * time.Second))
	for {
		line, err := b.rd.ReadBytes(0)
		if err != nil {
			b.t.Fatalf("chromium: %s: read: %v\nstderr:\n%s", method, err, b.stderr)
		}
		var reply struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(bytes.TrimSuffix(line, []byte{0}), &reply); err != nil {
			b.t.Fatalf("chromium: %s: bad message %q: %v", method, line, err)
		}
		if reply.ID != id {
			continue // an event, or the answer to an earlier send
		}
		if reply.Error != nil {
			b.t.Fatalf("chromium: %s: %s", method, reply.Error.Message)
		}
		if result != nil {
			if err := json.Unmarshal(reply.Result, result); err != nil {
				b.t.Fatalf("chromium: %s: decode %s: %v", method, reply.Result, err)
			}
		}
		return
	}
}

// lockedBuffer collects the browser's stderr for failure messages.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
