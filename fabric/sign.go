package fabric

import (
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/minionsdev/minions/internal/errs"
)

// Sign signs msg with the NKey of seed (a node's credential) and returns
// the signature, base64url without padding.
func Sign(seed string, msg []byte) (string, error) {
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(seed)))
	if err != nil {
		return "", errs.New(errs.InvalidArgument, "nkey seed: %v", err)
	}
	sig, err := kp.Sign(msg)
	if err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(sig), nil
}

// Verify reports whether sig (from Sign) is pub's signature of msg; false
// for a malformed key or signature.
func Verify(pub string, msg []byte, sig string) bool {
	if !ValidPublicKey(pub) {
		return false
	}
	return verifyNonce(pub, sig, msg)
}

// A node proves who it is to the control plane's HTTP API (image and
// kernel fetches) with an Authorization header of this scheme:
//
//	Authorization: MinionsNode <public key> <unix seconds> <signature>
//
// The signature covers the scheme, the method, the request URI and the
// time, so a captured header is good for that one request within
// NodeAuthSkew only; the public key must be a registered host's.
const (
	NodeAuthScheme = "MinionsNode"
	NodeAuthSkew   = 5 * time.Minute
)

func nodeAuthMessage(method, uri string, unix int64) []byte {
	return []byte(NodeAuthScheme + "\n" + method + "\n" + uri + "\n" + strconv.FormatInt(unix, 10))
}

// SignRequest returns the Authorization header value for a node (seed)
// sending method uri (path and query, as in http.Request.RequestURI) at t.
func SignRequest(seed, method, uri string, t time.Time) (string, error) {
	pub, err := PublicKeyOf(seed)
	if err != nil {
		return "", err
	}
	sig, err := Sign(seed, nodeAuthMessage(method, uri, t.Unix()))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s %d %s", NodeAuthScheme, pub, t.Unix(), sig), nil
}

// IsNodeAuth reports whether an Authorization header value uses the
// node scheme.
func IsNodeAuth(header string) bool {
	scheme, _, _ := strings.Cut(header, " ")
	return strings.EqualFold(scheme, NodeAuthScheme)
}

// VerifyRequest checks a node's Authorization header for method uri at
// now and returns the signer's public key (the caller checks that it is
// a registered host's). errs.PermissionDenied for a malformed, stale or
// forged header.
func VerifyRequest(header, method, uri string, now time.Time) (string, error) {
	f := strings.Fields(header)
	if len(f) != 4 || !strings.EqualFold(f[0], NodeAuthScheme) {
		return "", errs.New(errs.PermissionDenied, "malformed node signature: want `%s <key> <time> <signature>`", NodeAuthScheme)
	}
	pub, sig := f[1], f[3]
	ts, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return "", errs.New(errs.PermissionDenied, "malformed node signature time")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > NodeAuthSkew || d < -NodeAuthSkew {
		return "", errs.New(errs.PermissionDenied, "node signature is stale (clocks more than %s apart?)", NodeAuthSkew)
	}
	if !Verify(pub, nodeAuthMessage(method, uri, ts), sig) {
		return "", errs.New(errs.PermissionDenied, "bad node signature")
	}
	return pub, nil
}
