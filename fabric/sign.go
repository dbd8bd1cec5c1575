package fabric

import (
	"time"

	"github.com/minionsdev/minions/fabric/nodeauth"
)

// The node signatures live in fabric/nodeauth (the API links it without
// the NATS server); these are their names in fabric.

// Sign signs msg with the NKey of seed (a node's credential) and returns
// the signature, base64url without padding.
func Sign(seed string, msg []byte) (string, error) { return nodeauth.Sign(seed, msg) }

// Verify reports whether sig (from Sign) is pub's signature of msg; false
// for a malformed key or signature.
func Verify(pub string, msg []byte, sig string) bool { return nodeauth.Verify(pub, msg, sig) }

// NodeAuthScheme and NodeAuthSkew: see nodeauth.Scheme.
const (
	NodeAuthScheme = nodeauth.Scheme
	NodeAuthSkew   = nodeauth.Skew
)

// SignRequest returns the Authorization header value for a node (seed)
// sending method uri (path and query, as in http.Request.RequestURI) at t.
func SignRequest(seed, method, uri string, t time.Time) (string, error) {
	return nodeauth.SignRequest(seed, method, uri, t)
}

// IsNodeAuth reports whether an Authorization header value uses the
// node scheme.
func IsNodeAuth(header string) bool { return nodeauth.IsNodeAuth(header) }

// VerifyRequest checks a node's Authorization header for method uri at
// now and returns the signer's public key (the caller checks that it is
// a registered host's). errs.PermissionDenied for a malformed, stale or
// forged header.
func VerifyRequest(header, method, uri string, now time.Time) (string, error) {
	return nodeauth.VerifyRequest(header, method, uri, now)
}
