package e2e

// Issue 11, item 12: no plain HTTP API beyond loopback unless asked for,
// TLS when a certificate is given, and no profiles on the TCP admin
// listener.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// apiServe is a `minions serve` started with chosen flags.
type apiServe struct {
	cmd  *exec.Cmd
	out  *syncBuf
	done chan struct{}
}

func startAPIServe(t *testing.T, args ...string) *apiServe {
	t.Helper()
	all := append([]string{"serve", "--config", noWarmConfig, "--ssh-bind", freePort(t)}, args...)
	p := &apiServe{cmd: exec.Command(filepath.Join(binDir, "minions"), all...), out: &syncBuf{}, done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+stateDir, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop() })
	return p
}

func (p *apiServe) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// waitListening waits until the log says the api listens, or the process
// exits (false).
func (p *apiServe) waitListening(t *testing.T) bool {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(p.out.String(), "api listening") {
		select {
		case <-p.done:
			return false
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("minions serve: no api after 60s:\n%s", p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

func writeSelfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "minions e2e"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "api.crt"), filepath.Join(dir, "api.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestAPITransport(t *testing.T) {
	setup(t)
	dir := t.TempDir()
	// A token exists, so authentication is configured: binding beyond
	// loopback used to be allowed in plain HTTP from then on.
	must(t, "user", "add", "tina")
	t.Cleanup(func() { minions(t, "", "user", "rm", "tina", "--yes") })
	tok := tokenFor(t, "tina")

	_, port, _ := net.SplitHostPort(freePort(t))
	wild := "0.0.0.0:" + port
	t.Run("plain http beyond loopback is refused", func(t *testing.T) {
		p := startAPIServe(t, "--bind", wild, "--admin-bind", freePort(t))
		if p.waitListening(t) {
			t.Fatalf("minions serve listens in plain http on %s:\n%s", wild, p.out.String())
		}
		if p.cmd.ProcessState.Success() || !strings.Contains(p.out.String(), "--tls-cert") || !strings.Contains(p.out.String(), "--insecure-http") {
			t.Fatalf("refusal: %v\n%s", p.cmd.ProcessState, p.out.String())
		}
	})

	t.Run("insecure on request, with a warning", func(t *testing.T) {
		admin := freePort(t)
		p := startAPIServe(t, "--bind", wild, "--admin-bind", admin, "--insecure-http")
		if !p.waitListening(t) {
			t.Fatalf("minions serve --insecure-http exited:\n%s", p.out.String())
		}
		if !strings.Contains(p.out.String(), "INSECURE") {
			t.Fatalf("no warning:\n%s", p.out.String())
		}
		req, _ := http.NewRequest("GET", "http://127.0.0.1:"+port+"/v1/whoami", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "tina") {
			t.Fatalf("whoami: %d %s", resp.StatusCode, b)
		}
		// No profiles on the TCP admin listener (any local user reaches it).
		resp, err = http.Get("http://" + admin + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("GET /debug/pprof/ on the admin listener: %d, want 404", resp.StatusCode)
		}
		// They are on the root-only socket.
		out, err := exec.Command("curl", "-sf", "--unix-socket", filepath.Join(stateDir, "run", "debug.sock"), "http://minions/debug/pprof/").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "goroutine") {
			t.Fatalf("profiles on the debug socket as root: %v %.200s", err, out)
		}
		p.stop()
	})

	t.Run("tls with a certificate", func(t *testing.T) {
		certFile, keyFile, pool := writeSelfSigned(t, dir)
		p := startAPIServe(t, "--bind", wild, "--admin-bind", freePort(t), "--tls-cert", certFile, "--tls-key", keyFile)
		if !p.waitListening(t) {
			t.Fatalf("minions serve with tls exited:\n%s", p.out.String())
		}
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		req, _ := http.NewRequest("GET", "https://127.0.0.1:"+port+"/v1/whoami", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "tina") || resp.TLS == nil {
			t.Fatalf("whoami over tls: %d %s", resp.StatusCode, b)
		}
		// The CLI trusts a private CA through SSL_CERT_FILE.
		cmd := exec.Command(filepath.Join(binDir, "minions"), "--host", "https://127.0.0.1:"+port, "--api-key", tok, "whoami", "--json")
		cmd.Env = append(os.Environ(), "SSL_CERT_FILE="+certFile, "MINIONS_STATE_DIR="+t.TempDir())
		if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "tina") {
			t.Fatalf("minions --host https://...: %v\n%s", err, out)
		}
		p.stop()
	})
}
