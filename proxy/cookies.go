package proxy

import (
	"net/http"
	"strings"
)

// rewriteSetCookies (the reverse proxy's ModifyResponse) makes every cookie
// a VM sets host-only. VMs share a parent domain, so a `Set-Cookie: ...;
// Domain=.<domain>` passed through would plant the cookie in every other
// tenant's app (and a Domain naming another VM's host is refused by
// browsers only by luck of matching rules). Dropping the Domain attribute
// scopes the cookie to exactly the host that answered, which is what the
// VM reached by that host needs. A VM's attempt to set the proxy's own
// session cookie is dropped. Every other attribute is kept byte for byte.
// Script-set cookies (document.cookie) never pass the proxy: that is why
// the domain belongs on the Public Suffix List (see README).
func rewriteSetCookies(resp *http.Response) error {
	lines := resp.Header.Values("Set-Cookie")
	if len(lines) == 0 {
		return nil
	}
	var out []string
	for _, line := range lines {
		if l, ok := hostOnlyCookie(line); ok {
			out = append(out, l)
		}
	}
	resp.Header.Del("Set-Cookie")
	for _, l := range out {
		resp.Header.Add("Set-Cookie", l)
	}
	return nil
}

// hostOnlyCookie returns a Set-Cookie line without its Domain attributes,
// or false when the line must not reach the browser.
func hostOnlyCookie(line string) (string, bool) {
	parts := strings.Split(line, ";")
	name, _, _ := strings.Cut(parts[0], "=")
	if strings.TrimSpace(name) == cookieName {
		return "", false
	}
	keep := parts[:1]
	for _, a := range parts[1:] {
		k, _, _ := strings.Cut(a, "=")
		if strings.EqualFold(strings.TrimSpace(k), "domain") {
			continue
		}
		keep = append(keep, a)
	}
	return strings.Join(keep, ";"), true
}
