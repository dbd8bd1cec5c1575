package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
)

// VerifyPrefix is the label under a custom domain that holds its TXT
// verification record: _minions-verify.www.example.org.
const VerifyPrefix = "_minions-verify"

// DomainToken is the value a TXT record at VerifyPrefix.<domain> must hold
// to prove that whoever controls domain gives it to the VM with ID vmID,
// owned by the user with ID ownerID. It names both (so a reader of the zone
// sees what it grants) and carries a MAC from the proxy's secret over them
// and the domain, so it needs no storage and cannot be forged. The record
// proves nothing for another VM, a new VM under the same name, or the same
// VM after it changed owner.
func (p *Proxy) DomainToken(vmID, ownerID, domain string) string {
	m := hmac.New(sha256.New, p.cfg.Secret)
	m.Write([]byte("minions-domain-v2\x00" + vmID + "\x00" + ownerID + "\x00" + normalizeHost(domain)))
	return "minions-verify=vm:" + vmID + ",owner:" + ownerID + "," + hex.EncodeToString(m.Sum(nil)[:16])
}

// CNAMETarget is the host name a custom domain's CNAME must point to for
// the VM with ID vmID: "<vmid>.<Domain>". It names the immutable VM ID, not
// the VM's name, so a CNAME cannot be taken over by whoever next creates a
// VM with a recycled name. Wildcard DNS for *.<Domain> makes it resolve to
// the proxy. Empty in local mode (no CNAME verification there).
func (p *Proxy) CNAMETarget(vmID string) string {
	if p.cfg.Domain == "" {
		return ""
	}
	return strings.ToLower(vmID) + "." + p.cfg.Domain
}

// CheckCustomDomain validates the syntax of a custom domain: a DNS name
// with two or more labels that is neither under the proxy's Domain nor
// under localhost. Errors are errs.InvalidArgument.
func (p *Proxy) CheckCustomDomain(domain string) error {
	d := normalizeHost(domain)
	if err := checkHostname(d); err != nil {
		return errs.New(errs.InvalidArgument, "custom domain: %v", err)
	}
	if p.cfg.Domain != "" && (d == p.cfg.Domain || strings.HasSuffix(d, "."+p.cfg.Domain)) {
		return errs.New(errs.InvalidArgument, "custom domain %s is under %s", d, p.cfg.Domain)
	}
	if d == "localhost" || strings.HasSuffix(d, ".localhost") {
		return errs.New(errs.InvalidArgument, "custom domain %s is under localhost", d)
	}
	return nil
}

// VerifyDomain checks that whoever controls domain pointed it at the VM
// with ID vmID owned by ownerID: either domain is a CNAME for
// CNAMETarget(vmID) (not in local mode), or a TXT record at
// VerifyPrefix.<domain> holds DomainToken(vmID, ownerID, domain). It only
// looks; the caller records the result and the store's
// Domains.AllowCertificate must admit the name only after it succeeded, so
// no certificate is requested before. Errors: errs.InvalidArgument for a
// bad name, errs.FailedPrecondition when neither record is in place (the
// message says what to publish).
func (p *Proxy) VerifyDomain(ctx context.Context, domain, vmID, ownerID string) error {
	if err := p.CheckCustomDomain(domain); err != nil {
		return err
	}
	d := normalizeHost(domain)
	want := p.DomainToken(vmID, ownerID, d)
	if txts, err := p.cfg.Resolver.LookupTXT(ctx, VerifyPrefix+"."+d); err == nil {
		for _, t := range txts {
			if strings.TrimSpace(t) == want {
				return nil
			}
		}
	}
	target := p.CNAMETarget(vmID)
	if target != "" {
		if cname, err := p.cfg.Resolver.LookupCNAME(ctx, d); err == nil && normalizeHost(cname) == target {
			return nil
		}
		return errs.New(errs.FailedPrecondition,
			"verify domain %s: publish a CNAME record %s -> %s, or a TXT record %s.%s with %q",
			d, d, target, VerifyPrefix, d, want)
	}
	return errs.New(errs.FailedPrecondition, "verify domain %s: publish a TXT record %s.%s with %q", d, VerifyPrefix, d, want)
}
