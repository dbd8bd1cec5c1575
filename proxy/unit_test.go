package proxy

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

func TestConfigValidate(t *testing.T) {
	key := make([]byte, SecretSize)
	tests := []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for valid
	}{
		{"local mode", Config{Secret: key}, ""},
		{"tls mode", Config{Secret: key, Domain: "Example.COM.", StorageDir: "/x"}, ""},
		{"short secret", Config{Secret: key[:16]}, "secret must be 32 bytes"},
		{"no storage", Config{Secret: key, Domain: "example.com"}, "storage dir"},
		{"one-label domain", Config{Secret: key, Domain: "com", StorageDir: "/x"}, "two labels"},
		{"bad domain", Config{Secret: key, Domain: "ex_ample.com", StorageDir: "/x"}, "invalid label"},
		{"http ca", Config{Secret: key, Domain: "example.com", StorageDir: "/x", ACMECA: "http://ca/dir"}, "https URL"},
		{"bad bind", Config{Secret: key, HTTPBind: "80"}, "http bind"},
		{"negative timeout", Config{Secret: key, IdleTimeout: -time.Second}, "idle timeout"},
		{"bad port", Config{Secret: key, PublicHTTPPort: 70000}, "out of range"},
		{"global cap under per-ip cap", Config{Secret: key, MaxConns: 10, MaxConnsPerIP: 20}, "max conns (10) must be at least"},
		{"global cap off", Config{Secret: key, MaxConns: -1, MaxConnsPerIP: 20}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || errs.ClassOf(err) != errs.InvalidArgument {
				t.Fatalf("got %v, want invalid argument containing %q", err, tc.want)
			}
		})
	}
	d := Config{Staging: true}.withDefaults()
	if d.ACMECA != "https://acme-staging-v02.api.letsencrypt.org/directory" || d.HTTPSBind != DefaultHTTPSBind || d.RatePerSecond != DefaultRatePerSecond || d.MaxConns != DefaultMaxConns {
		t.Fatalf("defaults: %+v", d)
	}
}

func TestSplitHost(t *testing.T) {
	tests := []struct {
		host, domain, vm string
		ok               bool
	}{
		{"web.example.com", "example.com", "web", true},
		{"a.b.example.com", "example.com", "", false},
		{"example.com", "example.com", "", false},
		{"web.example.org", "example.com", "", false},
		{"web.localhost", "", "web", true},
		{"-x.localhost", "", "", false},
		{"web.localhost", "example.com", "", false},
	}
	for _, tc := range tests {
		vm, ok := SplitHost(tc.host, tc.domain)
		if vm != tc.vm || ok != tc.ok {
			t.Errorf("SplitHost(%q, %q) = %q, %v", tc.host, tc.domain, vm, ok)
		}
	}
	if got := normalizeHost("Web.Example.COM.:8443"); got != "web.example.com" {
		t.Errorf("normalizeHost: %q", got)
	}
}

func TestSigner(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := signer{key: []byte("0123456789abcdef0123456789abcdef"), now: func() time.Time { return now }}
	tok := s.sign(claims{Kind: kindSession, VMID: "vm1", Owner: "alice", Exp: now.Add(time.Hour).Unix()})
	if c, err := s.verify(tok, kindSession); err != nil || c.VMID != "vm1" || c.Owner != "alice" {
		t.Fatalf("verify: %+v %v", c, err)
	}
	other := signer{key: []byte("another key, not the right one!!"), now: s.now}
	flip := []byte(tok)
	flip[3] ^= 1
	for name, bad := range map[string]func() error{
		"wrong kind":  func() error { _, err := s.verify(tok, kindLogin); return err },
		"wrong key":   func() error { _, err := other.verify(tok, kindSession); return err },
		"tampered":    func() error { _, err := s.verify(string(flip), kindSession); return err },
		"no dot":      func() error { _, err := s.verify("abc", kindSession); return err },
		"empty":       func() error { _, err := s.verify("", kindSession); return err },
		"garbage sig": func() error { _, err := s.verify(tok[:strings.Index(tok, ".")]+".!!", kindSession); return err },
		"expired": func() error {
			later := signer{key: s.key, now: func() time.Time { return now.Add(time.Hour) }}
			_, err := later.verify(tok, kindSession)
			return err
		},
	} {
		if err := bad(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestMemLedger(t *testing.T) {
	var u memLedger
	ctx := context.Background()
	now := time.Now()
	use := func(id string, exp time.Time) bool {
		ok, err := u.Use(ctx, id, exp)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !use("b", now.Add(-time.Second)) {
		t.Fatal("b fresh")
	}
	if !use("a", now.Add(time.Hour)) || use("a", now.Add(time.Hour)) {
		t.Fatal("a token must be usable exactly once")
	}
	// The next sweep forgets the expired b (a is still remembered).
	u.next = 0
	use("c", now.Add(time.Hour))
	if _, ok := u.ids["b"]; ok {
		t.Fatal("expired id not swept")
	}
	if use("a", now.Add(time.Hour)) {
		t.Fatal("unexpired id forgotten")
	}
}

func TestHostOnlyCookie(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"a=1; Domain=.example.com; Path=/", "a=1; Path=/"},
		{"a=1;domain=example.com;Secure", "a=1;Secure"},
		{"a=1; DOMAIN = .x.example.com; HttpOnly; Domain=y", "a=1; HttpOnly"},
		{"a=1; Path=/; SameSite=Lax", "a=1; Path=/; SameSite=Lax"},
		{"minions_session=forged; Path=/", ""},
	} {
		got, ok := hostOnlyCookie(tc.in)
		if got != tc.want || ok != (tc.want != "") {
			t.Errorf("hostOnlyCookie(%q) = %q, %v; want %q", tc.in, got, ok, tc.want)
		}
	}
}

func TestRateLimiter(t *testing.T) {
	now := time.Unix(0, 0)
	l := newRateLimiter(2, 3, func() time.Time { return now })
	var got []bool
	for range 4 {
		ok, _ := l.allow("1.2.3.4")
		got = append(got, ok)
	}
	if want := []bool{true, true, true, false}; !slices.Equal(got, want) {
		t.Fatalf("burst: %v", got)
	}
	if ok, wait := l.allow("1.2.3.4"); ok || wait != 500*time.Millisecond {
		t.Fatalf("wait %v", wait)
	}
	if ok, _ := l.allow("5.6.7.8"); !ok {
		t.Fatal("other ip limited")
	}
	now = now.Add(500 * time.Millisecond)
	if ok, _ := l.allow("1.2.3.4"); !ok {
		t.Fatal("token not refilled after 0.5 s at 2/s")
	}
	now = now.Add(2 * time.Minute)
	l.allow("9.9.9.9")
	if len(l.buckets) != 1 {
		t.Fatalf("idle buckets not swept: %d", len(l.buckets))
	}
	off := newRateLimiter(-1, 0, time.Now)
	for range 1000 {
		if ok, _ := off.allow("x"); !ok {
			t.Fatal("disabled limiter limited")
		}
	}
}

// A remembered session cookie still expires on time and a forged or
// mis-kinded one is never remembered as good.
func TestSessionCache(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	s := signer{key: []byte("0123456789abcdef0123456789abcdef"), now: func() time.Time { return now }}
	tok := s.sign(claims{Kind: kindSession, VMID: "vm1", Owner: "alice", Exp: now.Add(time.Hour).Unix()})
	var cache sessionCache
	for range 2 { // the second answer comes from the cache
		if c, err := cache.verify(s, tok); err != nil || c.VMID != "vm1" {
			t.Fatalf("verify: %+v %v", c, err)
		}
	}
	if len(cache.m) != 1 {
		t.Fatalf("cache holds %d entries, want 1", len(cache.m))
	}
	now = now.Add(time.Hour)
	if _, err := cache.verify(s, tok); err == nil {
		t.Fatal("expired session admitted from the cache")
	}
	login := s.sign(claims{Kind: kindLogin, VMID: "vm1", Exp: now.Add(time.Hour).Unix()})
	flip := []byte(tok)
	flip[3] ^= 1
	for _, bad := range []string{login, string(flip)} {
		for range 2 {
			if _, err := cache.verify(s, bad); err == nil {
				t.Fatalf("bad token %q admitted", bad)
			}
		}
	}
	for i := range sessionCacheMax + 10 {
		tok := s.sign(claims{Kind: kindSession, VMID: "vm1", ID: strconv.Itoa(i), Exp: now.Add(time.Hour).Unix()})
		if _, err := cache.verify(s, tok); err != nil {
			t.Fatal(err)
		}
	}
	if len(cache.m) > sessionCacheMax {
		t.Fatalf("cache grew to %d entries", len(cache.m))
	}
}
