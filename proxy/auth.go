package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"net/textproto"
	"strings"
	"sync"
	"time"
)

// Token kinds. The kind is part of the signed payload, so a login token can
// never be used as a cookie or the other way round.
const (
	kindLogin   = "login"   // one-time link for the owner
	kindShare   = "share"   // reusable link for anyone until it expires
	kindSession = "session" // cookie
)

// cookieName is the session cookie; it is host-only (no Domain attribute),
// so it is scoped to exactly one VM host.
const cookieName = "minions_session"

// Paths the proxy answers itself on every VM host.
const (
	loginPath  = "/__minions/login"
	logoutPath = "/__minions/logout"
)

// claims is the signed payload of links and cookies. Every token names the
// VM by its immutable ID, the owner and the VM's revocation counter when it
// was minted; the proxy admits it only while the route still has all
// three, so a link outlives neither its VM, nor a change of owner, nor a
// `share --private`, rename or destroy (which bump the counter).
type claims struct {
	Kind  string `json:"k"`
	ID    string `json:"i,omitempty"` // random; single-use bookkeeping for login links
	Host  string `json:"h,omitempty"` // links: the host they were issued for
	VMID  string `json:"v,omitempty"` // the VM they admit to
	Owner string `json:"o,omitempty"` // the VM's owner when minted
	Gen   int64  `json:"g,omitempty"` // the VM's revocation counter when minted
	Exp   int64  `json:"e"`           // unix seconds
}

// valid reports whether c (a link or session) still holds for rt.
func (c claims) valid(rt Route) bool {
	return c.VMID != "" && c.VMID == rt.VMID && c.Owner == rt.Owner && c.Gen == rt.Gen
}

var errBadToken = errors.New("invalid or expired token")

// signer signs and verifies claims with HMAC-SHA256.
type signer struct {
	key []byte
	now func() time.Time
}

func (s signer) sign(c claims) string {
	payload, _ := json.Marshal(c) // claims always marshals
	p := base64.RawURLEncoding.EncodeToString(payload)
	return p + "." + base64.RawURLEncoding.EncodeToString(s.mac(p))
}

func (s signer) mac(p string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte("minions-proxy-v1\x00"))
	m.Write([]byte(p))
	return m.Sum(nil)
}

// verify checks the signature, kind and expiry of tok.
func (s signer) verify(tok, kind string) (claims, error) {
	p, sig, ok := strings.Cut(tok, ".")
	if !ok {
		return claims{}, errBadToken
	}
	want, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(want, s.mac(p)) {
		return claims{}, errBadToken
	}
	payload, err := base64.RawURLEncoding.DecodeString(p)
	if err != nil {
		return claims{}, errBadToken
	}
	var c claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return claims{}, errBadToken
	}
	if c.Kind != kind || s.now().Unix() >= c.Exp {
		return claims{}, errBadToken
	}
	return c, nil
}

// LinkLedger remembers redeemed one-time sign-in links.
type LinkLedger interface {
	// Use records the link id as redeemed until exp and reports whether it
	// was fresh. It must be atomic: of concurrent calls with one id, at
	// most one sees true. An error refuses the link (answered with 503).
	Use(ctx context.Context, id string, exp time.Time) (bool, error)
}

// memLedger is the default LinkLedger: in memory, so after a restart a
// used link could be redeemed once more within its (short) lifetime.
type memLedger struct {
	mu   sync.Mutex
	ids  map[string]int64 // id -> expiry (unix seconds)
	next int64            // next sweep
}

func (u *memLedger) Use(_ context.Context, id string, exp time.Time) (bool, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	now := time.Now().Unix()
	if u.ids == nil {
		u.ids = make(map[string]int64)
	}
	if now >= u.next {
		for k, e := range u.ids {
			if now >= e {
				delete(u.ids, k)
			}
		}
		u.next = now + 60
	}
	if _, seen := u.ids[id]; seen {
		return false, nil
	}
	u.ids[id] = exp.Unix()
	return true, nil
}

func randomID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// admitted reports whether r carries a session cookie valid for rt.
func (p *Proxy) admitted(r *http.Request, rt Route) bool {
	return p.admittedBy(r.Header["Cookie"], rt)
}

// admittedBy reports whether the Cookie lines carry a session that admits
// to rt.
func (p *Proxy) admittedBy(cookies []string, rt Route) bool {
	// The Cookie lines are scanned in place (r.Cookies would parse and
	// allocate every cookie of the VM's own app on every request).
	for _, line := range cookies {
		for part := range strings.SplitSeq(line, ";") {
			name, val, ok := strings.Cut(textproto.TrimString(part), "=")
			if !ok || name != cookieName {
				continue
			}
			if len(val) > 1 && val[0] == '"' && val[len(val)-1] == '"' {
				val = val[1 : len(val)-1] // as net/http reads a quoted value
			}
			// Owner and share sessions alike admit only while the VM keeps
			// its ID, owner and revocation counter: that check runs on every
			// request against the route as it is now; only the signature
			// check is remembered.
			if c, err := p.sessions.verify(p.signer, val); err == nil && c.valid(rt) {
				return true
			}
		}
	}
	return false
}

// sessionCache remembers session cookies whose signature verified, so a
// browser's every request does not pay for HMAC and JSON again. It holds
// only what the signature proved (the claims); expiry is checked on every
// use, and revocation too, by the caller (claims.valid against the current
// route), so a cached cookie is refused as soon as the route's counter,
// owner or VM ID moves. The signing key never changes during a Proxy's
// life. At most sessionCacheMax entries; when full it starts over.
type sessionCache struct {
	mu sync.Mutex
	m  map[string]claims
}

const sessionCacheMax = 4096

func (s *sessionCache) verify(sg signer, tok string) (claims, error) {
	s.mu.Lock()
	c, hit := s.m[tok]
	s.mu.Unlock()
	if hit {
		if sg.now().Unix() >= c.Exp {
			return claims{}, errBadToken
		}
		return c, nil
	}
	c, err := sg.verify(tok, kindSession)
	if err != nil {
		return claims{}, err
	}
	s.mu.Lock()
	if s.m == nil || len(s.m) >= sessionCacheMax {
		s.m = make(map[string]claims)
	}
	s.m[tok] = c
	s.mu.Unlock()
	return c, nil
}

// stripSessionCookie removes the proxy's own cookie before the request goes
// to the VM, so a VM never sees a credential.
func stripSessionCookie(h http.Header) {
	cookies := h.Values("Cookie")
	if len(cookies) == 0 {
		return
	}
	var keep []string
	for _, line := range cookies {
		var parts []string
		for _, part := range strings.Split(line, ";") {
			name, _, _ := strings.Cut(strings.TrimSpace(part), "=")
			if name != cookieName && strings.TrimSpace(part) != "" {
				parts = append(parts, strings.TrimSpace(part))
			}
		}
		if len(parts) > 0 {
			keep = append(keep, strings.Join(parts, "; "))
		}
	}
	h.Del("Cookie")
	if len(keep) > 0 {
		h.Set("Cookie", strings.Join(keep, "; "))
	}
}

// LoginLink returns a one-time URL that signs owner in to the VM with ID
// vmID, named vmName, whose revocation counter is gen:
// https://<vm>.<domain>/__minions/login?token=... (http and the localhost
// form in local mode). The link is valid for ttl (capped at one hour; zero
// means 10 minutes), works once (the LinkLedger remembers it), and only
// while the route of that host still has this VM ID, owner and counter.
// Redeeming it sets a session cookie scoped to that host and bound to the
// same three, then redirects to "/".
func (p *Proxy) LoginLink(vmName, vmID, owner string, gen int64, ttl time.Duration) string {
	if ttl <= 0 {
		ttl = 10 * time.Minute
	}
	ttl = min(ttl, time.Hour)
	host := p.VMHost(vmName)
	tok := p.signer.sign(claims{Kind: kindLogin, ID: randomID(), Host: host, VMID: vmID, Owner: owner, Gen: gen,
		Exp: p.signer.now().Add(ttl).Unix()})
	return p.baseURL(host) + loginPath + "?token=" + tok
}

// ShareLink returns a reusable URL that admits anyone who opens it to the
// VM with ID vmID (named vmName, owned by owner, revocation counter gen)
// until ttl has passed (zero means 7 days); each visitor gets a session
// cookie lasting at most until the link expires. The link and its sessions
// end when the VM is destroyed, renamed, changes owner or is made private
// again (the counter moves): a new VM reusing the name is never reachable
// through an old link. Rotating Config.Secret revokes all links.
func (p *Proxy) ShareLink(vmName, vmID, owner string, gen int64, ttl time.Duration) string {
	if ttl <= 0 {
		ttl = 7 * 24 * time.Hour
	}
	host := p.VMHost(vmName)
	tok := p.signer.sign(claims{Kind: kindShare, Host: host, VMID: vmID, Owner: owner, Gen: gen,
		Exp: p.signer.now().Add(ttl).Unix()})
	return p.baseURL(host) + loginPath + "?token=" + tok
}

// handleLogin redeems a login or share token for the route's host.
func (p *Proxy) handleLogin(w http.ResponseWriter, r *http.Request, host string, rt Route) {
	tok := r.URL.Query().Get("token")
	now := p.signer.now()
	c, err := p.signer.verify(tok, kindLogin)
	if err != nil {
		c, err = p.signer.verify(tok, kindShare)
	}
	switch {
	case err != nil || c.Host != host:
		p.metrics.loginFailed.Add(1)
		p.page(w, r, http.StatusForbidden, "Sign-in link not valid",
			"This sign-in link is invalid or has expired. Ask for a new one with `minions share "+rt.VMName+"`.")
		return
	case !c.valid(rt):
		p.metrics.loginFailed.Add(1)
		p.page(w, r, http.StatusForbidden, "Sign-in link not valid",
			"This link was issued for a VM that has since been destroyed, renamed, made private again or given to someone else. Ask for a new one with `minions share "+rt.VMName+"`.")
		return
	}
	if c.Kind == kindLogin {
		fresh, err := p.cfg.Links.Use(r.Context(), c.ID, time.Unix(c.Exp, 0))
		if err != nil {
			p.log.Warn("record used link", "vm_id", rt.VMID, "err", err)
			p.page(w, r, http.StatusServiceUnavailable, "Temporarily unavailable", "The proxy cannot check this sign-in link right now. Try again shortly.")
			return
		}
		if !fresh {
			p.metrics.loginFailed.Add(1)
			p.page(w, r, http.StatusForbidden, "Sign-in link already used",
				"Each sign-in link works once. Ask for a new one with `minions share "+rt.VMName+"`.")
			return
		}
	}
	exp := now.Add(p.cfg.SessionTTL)
	sess := claims{Kind: kindSession, VMID: c.VMID, Owner: c.Owner, Gen: c.Gen}
	if c.Kind == kindShare && time.Unix(c.Exp, 0).Before(exp) {
		exp = time.Unix(c.Exp, 0)
	}
	sess.Exp = exp.Unix()
	http.SetCookie(w, &http.Cookie{
		Name:     cookieName,
		Value:    p.signer.sign(sess),
		Path:     "/",
		Expires:  exp,
		MaxAge:   int(time.Until(exp).Seconds()),
		HttpOnly: true,
		Secure:   r.TLS != nil,
		SameSite: http.SameSiteLaxMode,
	})
	p.metrics.logins.Add(1)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (p *Proxy) handleLogout(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: cookieName, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode})
	p.page(w, r, http.StatusOK, "Signed out", "You are signed out of this VM.")
}
