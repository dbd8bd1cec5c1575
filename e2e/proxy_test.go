package e2e

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/minionsdev/minions/proxy/proxytest"
	"github.com/minionsdev/minions/store"
)

const proxyDomain = "example.test"

// serverRootPEM is the certificate of Pebble's own HTTPS endpoint, for the
// daemon's acme_root (certmagic must trust the CA's API).
func serverRootPEM(t *testing.T, directoryURL string) []byte {
	t.Helper()
	u, err := url.Parse(directoryURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", u.Host, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	chain := c.ConnectionState().PeerCertificates
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: chain[len(chain)-1].Raw})
}

// wsEchoSource is a small web server for the guest (standard library
// only, so it builds offline): "/" names itself, "/upload" counts the body,
// "/ws" is a WebSocket echo with a hand-rolled RFC 6455 upgrade.
const wsEchoSource = `package main

import (
	"bufio"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "wsecho here") })
	http.HandleFunc("/upload", func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		fmt.Fprintln(w, n)
	})
	http.HandleFunc("/ws", func(w http.ResponseWriter, r *http.Request) {
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			http.Error(w, "want a websocket upgrade", 400)
			return
		}
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
			base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
		rw.Flush()
		echo(rw)
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func echo(rw *bufio.ReadWriter) {
	for {
		var hdr [2]byte
		if _, err := io.ReadFull(rw, hdr[:]); err != nil {
			return
		}
		op := hdr[0] & 0x0f
		n := uint64(hdr[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(rw, b[:]); err != nil {
				return
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(rw, b[:]); err != nil {
				return
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		if n > 1<<24 {
			return
		}
		var mask [4]byte
		if hdr[1]&0x80 != 0 {
			if _, err := io.ReadFull(rw, mask[:]); err != nil {
				return
			}
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(rw, payload); err != nil {
			return
		}
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
		if op == 9 {
			op = 10
		}
		out := []byte{hdr[0]&0x80 | op}
		switch {
		case n < 126:
			out = append(out, byte(n))
		case n < 1<<16:
			out = append(out, 126, byte(n>>8), byte(n))
		default:
			out = binary.BigEndian.AppendUint64(append(out, 127), n)
		}
		rw.Write(append(out, payload...))
		rw.Flush()
		if op == 8 {
			return
		}
	}
}
`

// buildWSEcho builds the guest web server (static, CGO off).
func buildWSEcho(t testing.TB) []byte {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{"main.go": wsEchoSource, "go.mod": "module wsecho\n\ngo 1.22\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", "wsecho", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=", "GOPROXY=off", "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build guest web server: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "wsecho"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// installWSEcho copies the guest web server into vm (through exec's stdin)
// and starts it on port, detached from the exec session.
func installWSEcho(t testing.TB, vm, ip string, port int, bin []byte) {
	t.Helper()
	if r := minions(t, string(bin), "exec", vm, "--", "sh", "-c", "cat > /wsecho && chmod +x /wsecho"); r.code != 0 {
		t.Fatalf("copy wsecho into %s: %s", vm, r)
	}
	must(t, "exec", vm, "--", "sh", "-c", fmt.Sprintf("setsid /wsecho :%d </dev/null >/tmp/wsecho.log 2>&1 &", port))
	waitHTTP(t, fmt.Sprintf("http://%s:%d/", ip, port), "wsecho here")
}

func waitHTTP(t testing.TB, u, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := (&http.Client{Timeout: 3 * time.Second}).Get(u)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if strings.Contains(string(b), want) {
				return
			}
			err = fmt.Errorf("status %d: %q", resp.StatusCode, b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %q: %v", u, want, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// proxyEnv is the daemon's HTTPS proxy with Pebble issuing certificates.
type proxyEnv struct {
	d         *serveProc
	pebble    *proxytest.Pebble
	dns       *proxytest.DNS
	httpsAddr string
	httpsPort int
	rootFile  string // Pebble's issuing root, for curl
}

// client trusts Pebble's issuing root and sends every request to the
// proxy's HTTPS listener, whatever the host name; jar may be nil.
func (e *proxyEnv) client(jar http.CookieJar) *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: e.pebble.IssuerRoots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, e.httpsAddr)
		},
		ForceAttemptHTTP2: true,
	}
	return &http.Client{Transport: tr, Jar: jar, Timeout: 90 * time.Second}
}

func (e *proxyEnv) url(host, path string) string {
	return fmt.Sprintf("https://%s:%d%s", host, e.httpsPort, path)
}

// curl fetches https://host/path through the proxy with curl, trusting
// only Pebble's root, and returns the HTTP status and body.
func (e *proxyEnv) curl(t *testing.T, host, path string) (int, string) {
	t.Helper()
	out, err := exec.Command("curl", "-sS", "-m", "90", "--cacert", e.rootFile,
		"--resolve", fmt.Sprintf("%s:%d:127.0.0.1", host, e.httpsPort),
		"-w", "\n%{http_code}", e.url(host, path)).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s%s: %v\n%s", host, path, err, out)
	}
	s := strings.TrimRight(string(out), "\n")
	i := strings.LastIndex(s, "\n")
	code, _ := strconv.Atoi(s[i+1:])
	return code, s[:max(i, 0)]
}

// handshake reports whether a TLS handshake for name succeeds against
// Pebble's root.
func (e *proxyEnv) handshake(name string) error {
	d := &tls.Dialer{Config: &tls.Config{ServerName: name, RootCAs: e.pebble.IssuerRoots}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", e.httpsAddr)
	if err != nil {
		return err
	}
	return c.Close()
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

type webJSON struct {
	VM       string `json:"vm"`
	URL      string `json:"url"`
	Port     int    `json:"port"`
	Public   bool   `json:"public"`
	LoginURL string `json:"login_url"`
	ShareURL string `json:"share_url"`
}

type domainJSON struct {
	Name        string `json:"domain"`
	VM          string `json:"vm"`
	Verified    bool   `json:"verified"`
	CNAMETarget string `json:"cname_target"`
	TXTName     string `json:"txt_name"`
	TXTValue    string `json:"txt_value"`
	Problem     string `json:"problem"`
}

// TestProxy is issue 6's proof on a real VM: the daemon's proxy gets real
// certificates from Pebble for VM names and verified custom domains only,
// serves the page of the VM's own web server, keeps private VMs private
// until their owner signs in, passes WebSockets and streams a 100 MiB
// upload in bounded memory, and shows a page for a stopped VM.
func TestProxy(t *testing.T) {
	setup(t)
	wsBin := buildWSEcho(t) // before the VM boots: builds and boots both want the CPU

	var v vmJSON
	mustJSON(t, &v, "create", "web")
	defer func() {
		if r := minions(t, "", "destroy", "web", "--yes"); r.code != 0 && !strings.Contains(r.stderr, "no vm") {
			t.Errorf("destroy web: %s", r)
		}
	}()
	page := "page of web " + v.ID
	must(t, "exec", "web", "--", "sh", "-c", "mkdir -p /www && echo '"+page+"' > /www/index.html && httpd -p 80 -h /www")

	dns := proxytest.StartDNS(t, proxyDomain)
	httpsPort, httpPort := freeTCPPort(t), freeTCPPort(t)
	pebble := proxytest.StartPebble(t, proxytest.PebbleOptions{DNSAddr: dns.Addr, HTTPPort: httpPort, TLSPort: httpsPort})
	dir := t.TempDir()
	acmeRoot := filepath.Join(dir, "pebble-api.pem")
	if err := os.WriteFile(acmeRoot, serverRootPEM(t, pebble.DirectoryURL), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &proxyEnv{pebble: pebble, dns: dns, httpsAddr: loopback(httpsPort), httpsPort: httpsPort, rootFile: pebble.WriteRoot(t, dir)}
	e.d = startServe(t, fmt.Sprintf(`
bind = %q
admin_bind = %q
ssh_bind = %q
proxy_bind = %q
http_bind = %q
domain = %q
acme_ca = %q
acme_root = %q
acme_email = "admin@example.test"
dns_resolver = %q
public_ip = "127.0.0.1"
`, loopback(freeTCPPort(t)), loopback(freeTCPPort(t)), loopback(freeTCPPort(t)), e.httpsAddr, loopback(httpPort), proxyDomain,
		pebble.DirectoryURL, acmeRoot, dns.Addr), e.httpsAddr)
	host := "web." + proxyDomain

	t.Run("public-page-with-real-certificate", func(t *testing.T) {
		var w webJSON
		mustJSON(t, &w, "share", "web", "--public")
		if !w.Public || w.URL != e.url(host, "/") || w.LoginURL != "" {
			t.Fatalf("share --public: %+v", w)
		}
		start := time.Now()
		code, body := e.curl(t, host, "/")
		if code != 200 || strings.TrimSpace(body) != page {
			t.Fatalf("curl https://%s/: %d %q", host, code, body)
		}
		t.Logf("first https request (certificate issued by Pebble on demand): %s", time.Since(start).Round(time.Millisecond))
		if n := pebble.NewOrders(); n != 1 {
			t.Fatalf("certificate orders after the first request = %d, want 1", n)
		}
	})

	t.Run("unknown-names-get-no-certificate", func(t *testing.T) {
		before := pebble.NewOrders()
		for _, name := range []string{"nope." + proxyDomain, "a.b." + proxyDomain, proxyDomain, "stranger.org"} {
			if err := e.handshake(name); err == nil {
				t.Errorf("handshake for %s succeeded", name)
			}
		}
		if n := pebble.NewOrders(); n != before {
			t.Fatalf("unknown names caused %d certificate orders", n-before)
		}
	})

	t.Run("private-until-owner-signs-in", func(t *testing.T) {
		var w webJSON
		mustJSON(t, &w, "share", "web", "--private")
		if w.Public || !strings.HasPrefix(w.LoginURL, e.url(host, "/__minions/login?token=")) {
			t.Fatalf("share --private: %+v", w)
		}
		code, body := e.curl(t, host, "/")
		if code != http.StatusUnauthorized || strings.Contains(body, page) {
			t.Fatalf("anonymous request to a private vm: %d %q", code, body)
		}
		jar, _ := cookiejar.New(nil)
		owner := e.client(jar)
		if code, body := get(t, owner, w.LoginURL); code != 200 || strings.TrimSpace(body) != page {
			t.Fatalf("owner after sign-in: %d %q", code, body)
		}
		if code, body := get(t, owner, e.url(host, "/")); code != 200 || strings.TrimSpace(body) != page {
			t.Fatalf("owner with session cookie: %d %q", code, body)
		}
		// The link works once; a stranger replaying it gets nowhere.
		jar2, _ := cookiejar.New(nil)
		if code, body := get(t, e.client(jar2), w.LoginURL); code != http.StatusForbidden || strings.Contains(body, page) {
			t.Fatalf("replayed sign-in link: %d %q", code, body)
		}
		// A fresh sign-in link from plain `share` (text output).
		out := must(t, "share", "web")
		if !strings.Contains(out, "private") || !strings.Contains(out, "/__minions/login?token=") ||
			!strings.Contains(out, "DNS: "+host+" must resolve to 127.0.0.1 (an A record") {
			t.Fatalf("share output:\n%s", out)
		}
		// A shareable link admits anyone who opens it.
		mustJSON(t, &w, "share", "web", "--link", "--ttl", "1h")
		if w.ShareURL == "" {
			t.Fatalf("share --link: %+v", w)
		}
		jar3, _ := cookiejar.New(nil)
		guest := e.client(jar3)
		for range 2 {
			if code, body := get(t, guest, w.ShareURL); code != 200 || strings.TrimSpace(body) != page {
				t.Fatalf("share link: %d %q", code, body)
			}
		}
	})

	t.Run("expose-websocket-and-upload", func(t *testing.T) {
		installWSEcho(t, "web", v.IP, 8081, wsBin)
		var w webJSON
		mustJSON(t, &w, "expose", "web", "--port", "8081")
		if w.Port != 8081 {
			t.Fatalf("expose: %+v", w)
		}
		mustJSON(t, &w, "share", "web", "--public")
		if code, body := e.curl(t, host, "/"); code != 200 || !strings.Contains(body, "wsecho here") {
			t.Fatalf("after expose --port 8081: %d %q", code, body)
		}

		// WebSocket echo through TLS and the proxy.
		conn, err := tls.Dial("tcp", e.httpsAddr, &tls.Config{ServerName: host, RootCAs: pebble.IssuerRoots, NextProtos: []string{"http/1.1"}})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := websocket.NewConfig(e.url(host, "/ws"), "https://"+host)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Location.Scheme = "wss"
		ws, err := websocket.NewClient(cfg, conn)
		if err != nil {
			t.Fatalf("websocket handshake through the proxy: %v", err)
		}
		for _, msg := range []string{"hello", strings.Repeat("x", 70000)} {
			if err := websocket.Message.Send(ws, msg); err != nil {
				t.Fatal(err)
			}
			var got string
			ws.SetReadDeadline(time.Now().Add(30 * time.Second))
			if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
				t.Fatalf("websocket echo of %d bytes: %v (got %d bytes)", len(msg), err, len(got))
			}
		}
		ws.Close()

		// 100 MiB streams through without the daemon holding it.
		const size = 100 << 20
		base := e.d.rssKiB(t)
		peak := base
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for {
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
					peak = max(peak, e.d.rssKiB(t))
				}
			}
		}()
		start := time.Now()
		req, _ := http.NewRequest(http.MethodPost, e.url(host, "/upload"), io.LimitReader(zeros{}, size))
		req.ContentLength = size
		resp, err := e.client(nil).Do(req)
		close(stop)
		<-sampled
		if err != nil {
			t.Fatalf("upload: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(b)) != strconv.Itoa(size) {
			t.Fatalf("upload: %d %q", resp.StatusCode, b)
		}
		el := time.Since(start)
		peak = max(peak, e.d.statusKiB(t, "VmHWM:")) // the kernel's high-water mark misses nothing between samples
		growth := (peak - base) / 1024
		t.Logf("100 MiB upload through the proxy: %s (%.0f MiB/s); daemon RSS %d MiB -> peak %d MiB (+%d MiB)",
			el.Round(time.Millisecond), float64(size>>20)/el.Seconds(), base/1024, peak/1024, growth)
		if growth > 32 {
			t.Fatalf("daemon RSS grew by %d MiB during a 100 MiB upload", growth)
		}
		mustJSON(t, &w, "expose", "web", "--port", "80")
	})

	t.Run("custom-domains", func(t *testing.T) {
		const txtDomain, cnameDomain = "www.custom.test", "app.other.test"
		before := pebble.NewOrders()
		var d domainJSON
		mustJSON(t, &d, "domain", "add", "web", txtDomain)
		// Both records name the VM's immutable ID, not its recyclable name.
		if d.Verified || d.TXTName != "_minions-verify."+txtDomain || !strings.HasPrefix(d.TXTValue, "minions-verify=vm:"+v.ID+",owner:") ||
			d.CNAMETarget != v.ID+"."+proxyDomain || !strings.Contains(d.Problem, d.TXTValue) {
			t.Fatalf("domain add without a record: %+v", d)
		}
		if r := minions(t, "", "domain", "add", "web", txtDomain, "--verify"); r.code != 5 {
			t.Fatalf("domain add --verify without a record: %s", r)
		}
		// Unverified: no certificate request, no route.
		if err := e.handshake(txtDomain); err == nil {
			t.Fatal("handshake for an unverified domain succeeded")
		}
		if n := pebble.NewOrders(); n != before {
			t.Fatalf("an unverified domain caused %d certificate orders", n-before)
		}
		// Publish the TXT record, verify, and the domain serves the VM.
		dns.SetTXT(d.TXTName, d.TXTValue)
		mustJSON(t, &d, "domain", "verify", "web", txtDomain)
		if !d.Verified {
			t.Fatalf("domain verify: %+v", d)
		}
		if code, body := e.curl(t, txtDomain, "/"); code != 200 || strings.TrimSpace(body) != page {
			t.Fatalf("https://%s/: %d %q", txtDomain, code, body)
		}
		// A CNAME to the VM's name proves nothing (the next VM named web
		// would inherit it); a CNAME to its ID host verifies at once.
		dns.SetCNAME(cnameDomain, host)
		mustJSON(t, &d, "domain", "add", "web", cnameDomain)
		if d.Verified {
			t.Fatalf("domain add with a CNAME to the vm name: %+v", d)
		}
		dns.SetCNAME(cnameDomain, v.ID+"."+proxyDomain)
		mustJSON(t, &d, "domain", "add", "web", cnameDomain)
		if !d.Verified {
			t.Fatalf("domain add with a CNAME to the vm id host: %+v", d)
		}
		if code, body := e.curl(t, cnameDomain, "/"); code != 200 || strings.TrimSpace(body) != page {
			t.Fatalf("https://%s/: %d %q", cnameDomain, code, body)
		}
		var list []domainJSON
		mustJSON(t, &list, "domain", "list", "web")
		var names []string
		for _, x := range list {
			names = append(names, fmt.Sprintf("%s:%v", x.Name, x.Verified))
		}
		sort.Strings(names)
		if strings.Join(names, " ") != "app.other.test:true www.custom.test:true" {
			t.Fatalf("domain list: %v", names)
		}
		must(t, "domain", "rm", "web", cnameDomain)
		if r := minions(t, "", "domain", "rm", "web", cnameDomain); r.code != 3 {
			t.Fatalf("second domain rm: %s", r)
		}
		// Its certificate is still cached, but the name routes nowhere.
		if code, body := e.curl(t, cnameDomain, "/"); code != http.StatusNotFound || strings.Contains(body, page) {
			t.Fatalf("removed domain still served: %d %q", code, body)
		}
		// A missing VM gets no domain.
		if r := minions(t, "", "domain", "add", "nonexistent", "x.custom.test"); r.code != 3 {
			t.Fatalf("domain add to a missing vm: %s", r)
		}
		// Another (real) VM cannot take a domain verified for web, even
		// with the DNS records still in place; web keeps serving it.
		var other vmJSON
		mustJSON(t, &other, "create", "web2", "--memory", "256")
		defer minions(t, "", "destroy", "web2", "--yes")
		if r := minions(t, "", "domain", "add", "web2", txtDomain); r.code != 4 || !strings.Contains(r.stderr, "another vm") {
			t.Fatalf("domain add of a domain verified for another vm: %s", r)
		}
		if r := minions(t, "", "domain", "verify", "web2", txtDomain); r.code == 0 {
			t.Fatalf("domain verify by another vm: %s", r)
		}
		var others []domainJSON
		mustJSON(t, &others, "domain", "list", "web2")
		if len(others) != 0 {
			t.Fatalf("the other vm got domains: %+v", others)
		}
		if code, body := e.curl(t, txtDomain, "/"); code != 200 || strings.TrimSpace(body) != page {
			t.Fatalf("https://%s/ after another vm tried it: %d %q", txtDomain, code, body)
		}
		must(t, "destroy", "web2", "--yes")
	})

	t.Run("stopped-vm-page", func(t *testing.T) {
		must(t, "stop", "web")
		code, body := e.curl(t, host, "/")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "stopped") {
			t.Fatalf("stopped vm: %d %q", code, body)
		}
	})

	t.Run("domains-go-with-their-vm", func(t *testing.T) {
		must(t, "destroy", "web", "--yes")
		if code, body := e.curl(t, "www.custom.test", "/"); code != http.StatusNotFound || strings.Contains(body, page) {
			t.Fatalf("custom domain of a destroyed vm: %d %q", code, body)
		}
		if code, _ := e.curl(t, host, "/"); code != http.StatusNotFound {
			t.Fatalf("destroyed vm: %d", code)
		}
		// The rows are gone, so a new VM named web inherits nothing.
		db, err := store.Open(context.Background(), filepath.Join(stateDir, "minions.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var n int
		if err := db.QueryRow(`SELECT count(*) FROM domains WHERE vm_id = ?`, v.ID).Scan(&n); err != nil || n != 0 {
			t.Fatalf("domains of the destroyed vm left in the store: %d (%v)", n, err)
		}
	})
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
