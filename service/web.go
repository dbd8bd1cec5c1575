package service

import (
	"context"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
)

// Web is the HTTPS proxy as the service sees it: the address of a VM,
// sign-in links and custom domain checks. *proxy.Proxy implements it; the
// daemon injects it with SetWeb, so the service never imports the proxy.
//
// Links name the VM by its immutable ID, its owner's user ID
// (store.VM.OwnerID) and its revocation counter (store.WebGen), the same
// values the daemon's route table hands the proxy: a link or a session
// cookie stops admitting anyone once the VM is destroyed, renamed, made
// private again or changes hands, and a VM or user re-created under an old
// name inherits nothing.
type Web interface {
	URL(vmName string) string
	VMHost(vmName string) string
	LoginLink(vmName, vmID, owner string, gen int64, ttl time.Duration) string
	ShareLink(vmName, vmID, owner string, gen int64, ttl time.Duration) string
	CheckCustomDomain(domain string) error
	DomainToken(vmID, ownerID, domain string) string
	CNAMETarget(vmID string) string
	VerifyDomain(ctx context.Context, domain, vmID, ownerID string) error
}

// PublicIPWeb is a Web that knows the address its VMs' host names must
// resolve to (a domain proxy started with --public-ip). The service asks
// for it where a Web offers it, so a Web need not implement it.
type PublicIPWeb interface {
	Web
	// PublicIP is the IP address DNS must give for <vm>.<domain>, or "".
	PublicIP() string
}

// WebSource returns the Web to use, or an error (errs.FailedPrecondition
// when no proxy is configured on this installation). It is called on every
// web operation, so it may build the Web lazily and must cache it.
type WebSource func(ctx context.Context) (Web, error)

// webHolder holds the injected WebSource; the daemon replaces it once its
// proxy is listening, while requests may already run.
type webHolder struct{ src atomic.Pointer[WebSource] }

// SetWeb injects where links and domain checks come from. Safe to call
// while the service is in use.
func (s *Service) SetWeb(src WebSource) { s.web.src.Store(&src) }

func (s *Service) webFor(ctx context.Context) (Web, error) {
	if p := s.web.src.Load(); p != nil && *p != nil {
		return (*p)(ctx)
	}
	return nil, errs.New(errs.FailedPrecondition, "no web proxy is configured: run `minions serve --http-bind ADDR` (http://<vm>.localhost) or with --domain")
}

// vmWeb is the caller's VM name (errs.NotFound for others' VMs, proxy or
// not) and the web proxy (errs.FailedPrecondition when there is none).
func (s *Service) vmWeb(ctx context.Context, c Caller, name string) (store.VM, Web, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return store.VM{}, nil, err
	}
	w, err := s.webFor(ctx)
	return v, w, err
}

// Default and maximum lifetimes of links.
const (
	DefaultLoginTTL = 10 * time.Minute
	MaxLoginTTL     = time.Hour
	DefaultShareTTL = 7 * 24 * time.Hour
	MaxShareTTL     = 365 * 24 * time.Hour
	// DomainClaimTTL is how long an unverified custom domain claim lasts.
	DomainClaimTTL = 72 * time.Hour
)

// WebInfo says how a VM is reached through the proxy.
type WebInfo struct {
	VM     string `json:"vm"`
	URL    string `json:"url"`
	Port   int    `json:"port"`
	Public bool   `json:"public"`
	// LoginURL is a one-time sign-in link for the caller (the owner of a
	// private VM); ShareURL is a reusable link that admits anyone who
	// opens it. ExpiresAt is when the link in either stops working.
	LoginURL  string    `json:"login_url,omitempty"`
	ShareURL  string    `json:"share_url,omitempty"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// PublicIP is where DNS must point the VM's host name (an A or AAAA
	// record, usually the wildcard *.<domain>), when the proxy serves a
	// domain and the daemon was told its public address.
	PublicIP string `json:"public_ip,omitempty"`
}

// Expose sets the port of the VM the proxy forwards to (1-65535; default
// 80 for new VMs). It works in any settled state and is idempotent.
func (s *Service) Expose(ctx context.Context, c Caller, name string, port int) (WebInfo, error) {
	if port < 1 || port > 65535 {
		return WebInfo{}, errs.New(errs.InvalidArgument, "invalid port %d: want 1 to 65535", port)
	}
	return s.updateWeb(ctx, c, name, false, func(v *store.VM) { v.Port = port })
}

// ShareRequest changes who may reach a VM through the proxy and asks for
// links. Without Link, a private VM gets a one-time sign-in link for the
// caller (who must own the VM, unless Public is set).
type ShareRequest struct {
	// Public makes the VM reachable by anyone (true) or only by its
	// signed-in owner and holders of share links (false); nil leaves it.
	Public *bool `json:"public,omitempty"`
	// Link asks for a reusable share link that admits anyone who opens it.
	Link bool `json:"link,omitempty"`
	// TTLSeconds is the link's lifetime: default 10 minutes (at most an
	// hour) for a sign-in link, 7 days (at most a year) for a share link.
	TTLSeconds int64 `json:"ttl_seconds,omitempty"`
}

// Share applies req to the VM and returns its web address with the links
// asked for. A sign-in link is minted only for a private VM: a public one
// needs none. Making a VM private (Public false, even when it already is)
// also ends every link and proxy session issued for it before, in the same
// transaction: `share --private` is how an owner revokes share links.
// Errors: errs.NotFound for a VM the caller cannot see,
// errs.InvalidArgument for a bad TTL, errs.FailedPrecondition when no proxy
// is configured or when an admin asks for a sign-in link to a VM they do
// not own (a link admits the owner only; use Link).
func (s *Service) Share(ctx context.Context, c Caller, name string, req ShareRequest) (WebInfo, error) {
	ttl := time.Duration(req.TTLSeconds) * time.Second
	switch {
	case req.TTLSeconds < 0:
		return WebInfo{}, errs.New(errs.InvalidArgument, "ttl must not be negative")
	case req.Link && ttl > MaxShareTTL:
		return WebInfo{}, errs.New(errs.InvalidArgument, "share links last at most %s", MaxShareTTL)
	case !req.Link && ttl > MaxLoginTTL:
		return WebInfo{}, errs.New(errs.InvalidArgument, "sign-in links last at most %s (use --link for a longer-lived share link)", MaxLoginTTL)
	}
	_, w, err := s.vmWeb(ctx, c, name)
	if err != nil {
		return WebInfo{}, err
	}
	var info WebInfo
	if req.Public != nil {
		revoke := !*req.Public
		info, err = s.updateWeb(ctx, c, name, revoke, func(v *store.VM) { v.Public = *req.Public })
	} else {
		info, err = s.WebInfo(ctx, c, name)
	}
	if err != nil {
		return WebInfo{}, err
	}
	if !req.Link && info.Public {
		return info, nil
	}
	v, err := s.getVM(ctx, c, info.VM)
	if err != nil {
		return WebInfo{}, err
	}
	gen, err := store.WebGen(ctx, s.DB, v.ID)
	if err != nil {
		return WebInfo{}, err
	}
	now := time.Now().UTC()
	switch {
	case req.Link:
		if ttl == 0 {
			ttl = DefaultShareTTL
		}
		info.ShareURL = w.ShareLink(v.Name, v.ID, v.OwnerID, gen, ttl)
		info.ExpiresAt = now.Add(ttl).Truncate(time.Second)
	default:
		if v.OwnerID != c.UserID {
			if req.Public != nil {
				break // made private by an admin: no link for them
			}
			return WebInfo{}, errs.New(errs.FailedPrecondition, "vm %s belongs to %s: a sign-in link admits its owner only; ask for a share link instead", v.Name, v.Owner)
		}
		if ttl == 0 {
			ttl = DefaultLoginTTL
		}
		info.LoginURL = w.LoginLink(v.Name, v.ID, v.OwnerID, gen, ttl)
		info.ExpiresAt = now.Add(ttl).Truncate(time.Second)
	}
	return info, nil
}

// WebInfo returns how the VM is reached through the proxy, without links.
func (s *Service) WebInfo(ctx context.Context, c Caller, name string) (WebInfo, error) {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return WebInfo{}, err
	}
	return s.webInfo(ctx, v), nil
}

func (s *Service) webInfo(ctx context.Context, v store.VM) WebInfo {
	info := WebInfo{VM: v.Name, Port: v.Port, Public: v.Public}
	if w, err := s.webFor(ctx); err == nil {
		info.URL = w.URL(v.Name)
		if p, ok := w.(PublicIPWeb); ok {
			info.PublicIP = p.PublicIP()
		}
	}
	return info
}

// updateWeb changes a VM's web settings under its lock, so a concurrent
// long operation cannot write back a stale row over the change. With
// revoke it also bumps the VM's revocation counter in the same
// transaction, ending its outstanding links and proxy sessions.
func (s *Service) updateWeb(ctx context.Context, c Caller, name string, revoke bool, change func(v *store.VM)) (WebInfo, error) {
	var info WebInfo
	err := s.withVM(ctx, c, name, vm.OpRename, func(v store.VM) error {
		change(&v)
		err := s.DB.Tx(ctx, func(q store.Q) error {
			if err := store.UpdateVM(ctx, q, v); err != nil {
				return err
			}
			if revoke {
				return store.BumpWebGen(ctx, q, v.ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if revoke {
			s.log.Info("web links revoked", "vm_id", v.ID, "vm", v.Name)
		}
		info = s.webInfo(ctx, v)
		return nil
	})
	return info, err
}

// Domain is a custom domain of a VM and how to prove it is yours.
type Domain struct {
	Name     string `json:"domain"`
	VM       string `json:"vm"`
	Verified bool   `json:"verified"`
	// Either record proves ownership: a CNAME from the domain to
	// CNAMETarget (the VM's immutable "<vm-id>.<domain>", empty without a
	// proxy domain), or a TXT record named TXTName holding TXTValue (which
	// names the VM ID and owner).
	CNAMETarget string    `json:"cname_target,omitempty"`
	TXTName     string    `json:"txt_name"`
	TXTValue    string    `json:"txt_value"`
	CreatedAt   time.Time `json:"created_at"`
	// ExpiresAt is when an unverified claim lapses (zero once verified).
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Problem says why the last verification failed (AddDomain only).
	Problem string `json:"problem,omitempty"`
}

// txtPrefix is proxy.VerifyPrefix (the label of the TXT record); the
// service does not import the proxy.
const txtPrefix = "_minions-verify"

func normalizeDomain(d string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
}

// AddDomain claims a custom domain for a VM and tries to verify it at once.
// A claim counts only once verified: until then other VMs may claim the
// same name too, the first to verify wins (the other claims are dropped),
// and an unverified claim lapses after DomainClaimTTL (adding it again
// renews it). No certificate is requested and no traffic routed for a name
// before it is verified. Adding a domain the VM already has re-verifies
// it. Errors: errs.InvalidArgument for a bad name, errs.AlreadyExists when
// another VM holds it verified, errs.NotFound for a VM the caller cannot
// see.
func (s *Service) AddDomain(ctx context.Context, c Caller, name, domain string) (Domain, error) {
	v, w, err := s.vmWeb(ctx, c, name)
	if err != nil {
		return Domain{}, err
	}
	domain = normalizeDomain(domain)
	if err := w.CheckCustomDomain(domain); err != nil {
		return Domain{}, err
	}
	now := time.Now()
	err = s.DB.Tx(ctx, func(q store.Q) error {
		if err := store.PruneDomainClaims(ctx, q, now); err != nil {
			return err
		}
		held, err := store.VerifiedDomain(ctx, q, domain)
		switch {
		case err == nil && held.VMID != v.ID:
			return errs.New(errs.AlreadyExists, "domain %s is verified for another vm", domain)
		case err == nil:
			return nil
		case errs.ClassOf(err) != errs.NotFound:
			return err
		}
		return store.ClaimDomain(ctx, q, store.Domain{Name: domain, VMID: v.ID, Token: w.DomainToken(v.ID, v.OwnerID, domain),
			CreatedAt: now, ExpiresAt: now.Add(DomainClaimTTL)})
	})
	if err != nil {
		return Domain{}, err
	}
	d, err := s.verifyDomain(ctx, w, v, domain)
	if err != nil && errs.ClassOf(err) != errs.FailedPrecondition {
		return Domain{}, err
	}
	if err != nil {
		d.Problem = err.Error()
	}
	return d, nil
}

// VerifyDomain checks the DNS records of a VM's custom domain claim and
// records success. Errors: errs.FailedPrecondition (saying what to
// publish) while neither record is in place, errs.NotFound when the VM has
// no such claim (or it lapsed), errs.AlreadyExists when another VM
// verified the name first.
func (s *Service) VerifyDomain(ctx context.Context, c Caller, name, domain string) (Domain, error) {
	v, w, err := s.vmWeb(ctx, c, name)
	if err != nil {
		return Domain{}, err
	}
	return s.verifyDomain(ctx, w, v, normalizeDomain(domain))
}

func (s *Service) verifyDomain(ctx context.Context, w Web, v store.VM, domain string) (Domain, error) {
	d, err := s.getDomain(ctx, w, v, domain)
	if err != nil || d.Verified {
		return d, err
	}
	// No transaction across DNS lookups: look, then record.
	if err := w.VerifyDomain(ctx, domain, v.ID, v.OwnerID); err != nil {
		return d, err
	}
	if err := s.DB.Tx(ctx, func(q store.Q) error { return store.VerifyDomainClaim(ctx, q, domain, v.ID) }); err != nil {
		return d, err
	}
	d.Verified, d.ExpiresAt = true, time.Time{}
	s.log.Info("custom domain verified", "vm_id", v.ID, "domain", domain)
	return d, nil
}

// live reports whether a claim still counts at now (verified, or not yet
// lapsed).
func live(d store.Domain, now time.Time) bool { return d.Verified || d.ExpiresAt.After(now) }

func (s *Service) getDomain(ctx context.Context, w Web, v store.VM, domain string) (Domain, error) {
	d, err := store.GetDomain(ctx, s.DB, domain, v.ID)
	if err == nil && !live(d, time.Now()) {
		err = errs.New(errs.NotFound, "the claim of vm %s on %s lapsed unverified: add it again", v.Name, domain)
	}
	if errs.ClassOf(err) == errs.NotFound {
		return Domain{}, errs.New(errs.NotFound, "vm %s has no domain %s", v.Name, domain)
	}
	if err != nil {
		return Domain{}, err
	}
	return s.domainView(w, v, d), nil
}

func (s *Service) domainView(w Web, v store.VM, d store.Domain) Domain {
	return Domain{Name: d.Name, VM: v.Name, Verified: d.Verified, CNAMETarget: w.CNAMETarget(v.ID),
		TXTName: txtPrefix + "." + d.Name, TXTValue: w.DomainToken(v.ID, v.OwnerID, d.Name),
		CreatedAt: d.CreatedAt, ExpiresAt: d.ExpiresAt}
}

// ListDomains lists a VM's custom domain claims that still count, by name.
func (s *Service) ListDomains(ctx context.Context, c Caller, name string) ([]Domain, error) {
	v, w, err := s.vmWeb(ctx, c, name)
	if err != nil {
		return nil, err
	}
	ds, err := store.ListDomains(ctx, s.DB, v.ID)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := []Domain{}
	for _, d := range ds {
		if live(d, now) {
			out = append(out, s.domainView(w, v, d))
		}
	}
	return out, nil
}

// RemoveDomain detaches a custom domain from a VM; the proxy stops serving
// it at once (its certificate expires unused). Errors: errs.NotFound when
// the VM has no such domain.
func (s *Service) RemoveDomain(ctx context.Context, c Caller, name, domain string) error {
	v, err := s.getVM(ctx, c, name)
	if err != nil {
		return err
	}
	domain = normalizeDomain(domain)
	if err := store.DeleteDomain(ctx, s.DB, domain, v.ID); err != nil {
		if errs.ClassOf(err) == errs.NotFound {
			return errs.New(errs.NotFound, "vm %s has no domain %s", v.Name, domain)
		}
		return err
	}
	return nil
}

// PortDialer is an engine that reaches ports of its VMs itself (a remote
// host's engine, through its port tunnel). An error wrapping
// errors.ErrUnsupported means it cannot now (no tunnel): DialWeb falls
// back to the guest agent.
type PortDialer interface {
	DialPort(ctx context.Context, id string, port int) (net.Conn, error)
}
