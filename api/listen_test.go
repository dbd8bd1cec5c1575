package api_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/internal/errs"
)

func TestCheckTransport(t *testing.T) {
	tests := []struct {
		addr          string
		tls, insecure bool
		err           error
	}{
		{"127.0.0.1:3000", false, false, nil},
		{"[::1]:3000", false, false, nil},
		{"localhost:3000", false, false, nil},
		{"0.0.0.0:3000", false, false, errs.FailedPrecondition},
		{":3000", false, false, errs.FailedPrecondition},
		{"[::]:3000", false, false, errs.FailedPrecondition},
		{"192.0.2.5:3000", false, false, errs.FailedPrecondition},
		{"0.0.0.0:3000", true, false, nil},
		{"0.0.0.0:3000", false, true, nil},
		{"nonsense", false, false, errs.InvalidArgument},
	}
	for _, tt := range tests {
		err := api.CheckTransport(tt.addr, tt.tls, tt.insecure)
		if (tt.err == nil) != (err == nil) || (tt.err != nil && !errors.Is(err, tt.err)) {
			t.Errorf("CheckTransport(%q, tls=%v, insecure=%v) = %v, want %v", tt.addr, tt.tls, tt.insecure, err, tt.err)
		}
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "minions test"},
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

// TestListenTCP: plain HTTP only on loopback unless asked for; with a
// certificate the API is served over TLS and answers there.
func TestListenTCP(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	if _, err := api.ListenTCP("0.0.0.0:0", "", "", false); !errors.Is(err, errs.FailedPrecondition) {
		t.Fatalf("plain http on every interface: %v", err)
	}
	if _, err := api.ListenTCP("127.0.0.1:0", certFile, "", false); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("a certificate without its key: %v", err)
	}
	if _, err := api.ListenTCP("127.0.0.1:0", keyFile, certFile, false); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("swapped certificate and key: %v", err)
	}
	l, err := api.ListenTCP("127.0.0.1:0", certFile, keyFile, false)
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			http.Error(w, "not tls", 500)
			return
		}
		io.WriteString(w, "over tls")
	}))
	go srv.Serve(l)
	defer srv.Close()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("https://" + l.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "over tls" || resp.TLS == nil || resp.ProtoMajor != 1 {
		t.Fatalf("got %q over %s", b, resp.Proto)
	}
	// Plain HTTP to the TLS port gets nowhere.
	if resp, err := http.Get("http://" + l.Addr().String() + "/"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) == "over tls" {
			t.Fatal("plain http was served")
		}
	}
}
