package proxytest

import (
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// Pebble is an in-process ACME CA (letsencrypt/pebble) served over TLS on
// loopback. Its validation authority resolves names with a DNS server of
// the test's choice and connects to the given HTTP-01 and TLS-ALPN-01
// ports, which should be the proxy's listeners.
type Pebble struct {
	// DirectoryURL is the ACME directory (Config.ACMECA).
	DirectoryURL string
	// ServerRoots trusts Pebble's own HTTPS endpoint (Config.CARoots);
	// ServerRootPEM is the same certificate in PEM (the daemon's acme_root).
	ServerRoots   *x509.CertPool
	ServerRootPEM []byte
	// IssuerRoots trusts the certificates Pebble issues (for clients).
	IssuerRoots *x509.CertPool
	// IssuerRootPEM is the same root in PEM, for curl --cacert.
	IssuerRootPEM []byte

	newOrders atomic.Int64
}

// PebbleOptions configure StartPebble.
type PebbleOptions struct {
	DNSAddr  string // resolver for validation, e.g. (*DNS).Addr; required
	HTTPPort int    // port the VA uses for HTTP-01
	TLSPort  int    // port the VA uses for TLS-ALPN-01
	Verbose  bool   // log Pebble's chatter through t.Log
}

// StartPebble starts Pebble; it stops when the test ends. It sets
// PEBBLE_VA_NOSLEEP and PEBBLE_WFE_NONCEREJECT with t.Setenv, so tests using
// it cannot run in parallel.
func StartPebble(t *testing.T, o PebbleOptions) *Pebble {
	t.Helper()
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	out := io.Discard
	if o.Verbose || os.Getenv("PROXYTEST_PEBBLE_LOG") != "" {
		out = tWriter{t}
	}
	logger := log.New(out, "pebble ", 0)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "default"},
	})
	validator := va.New(logger, o.HTTPPort, o.TLSPort, false, o.DNSAddr, store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)

	p := &Pebble{}
	handler := front.Handler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/order-plz") {
			p.newOrders.Add(1)
		}
		handler.ServeHTTP(w, r)
	}))
	srv.Config.ErrorLog = logger
	srv.StartTLS()
	t.Cleanup(srv.Close)

	p.DirectoryURL = srv.URL + wfe.DirectoryPath
	p.ServerRoots = x509.NewCertPool()
	p.ServerRoots.AddCert(srv.Certificate())
	p.ServerRootPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	root := authority.GetRootCert(0)
	p.IssuerRoots = x509.NewCertPool()
	p.IssuerRoots.AddCert(root.Cert)
	p.IssuerRootPEM = root.PEM()
	return p
}

// NewOrders counts ACME new-order requests so far (each certificate request
// makes one).
func (p *Pebble) NewOrders() int64 { return p.newOrders.Load() }

// WriteRoot writes IssuerRootPEM into dir and returns the file's path.
func (p *Pebble) WriteRoot(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "pebble-root.pem")
	if err := os.WriteFile(path, p.IssuerRootPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
