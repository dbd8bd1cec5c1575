// Package nodeauth signs and checks the requests a node makes to the
// control plane's HTTP API with its NKey (see fabric.SignRequest). It is
// apart from fabric so that the API package, which every command of the
// host CLI links, does not link the embedded NATS server with it: the
// package inits of nats-server alone cost every command several
// milliseconds of start-up (TestStartupInits).
package nodeauth

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
	return VerifyRaw(pub, sig, msg)
}

// VerifyRaw reports whether sig (base64url, or standard base64) is pub's
// signature of msg, without checking that pub is a user key.
func VerifyRaw(pub, sig string, msg []byte) bool {
	if len(msg) == 0 || sig == "" {
		return false
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		if raw, err = base64.StdEncoding.DecodeString(sig); err != nil {
			return false
		}
	}
	kp, err := nkeys.FromPublicKey(pub)
	if err != nil {
		return false
	}
	return kp.Verify(msg, raw) == nil
}

// ValidPublicKey reports whether pub is an NKey user public key.
func ValidPublicKey(pub string) bool { return nkeys.IsValidPublicUserKey(pub) }

// PublicKeyOf returns the public key of a seed.
func PublicKeyOf(seed string) (string, error) {
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(seed)))
	if err != nil {
		return "", errs.New(errs.InvalidArgument, "nkey seed: %v", err)
	}
	return kp.PublicKey()
}

// A node proves who it is to the control plane's HTTP API (image and
// kernel fetches) with an Authorization header of this scheme:
//
//	Authorization: MinionsNode <public key> <unix seconds> <signature>
//
// The signature covers the scheme, the method, the request URI and the
// time, so a captured header is good for that one request within
// Skew only; the public key must be a registered host's.
const (
	Scheme = "MinionsNode"
	Skew   = 5 * time.Minute
)

func message(method, uri string, unix int64) []byte {
	return []byte(Scheme + "\n" + method + "\n" + uri + "\n" + strconv.FormatInt(unix, 10))
}

// SignRequest returns the Authorization header value for a node (seed)
// sending method uri (path and query, as in http.Request.RequestURI) at t.
func SignRequest(seed, method, uri string, t time.Time) (string, error) {
	pub, err := PublicKeyOf(seed)
	if err != nil {
		return "", err
	}
	sig, err := Sign(seed, message(method, uri, t.Unix()))
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s %s %d %s", Scheme, pub, t.Unix(), sig), nil
}

// IsNodeAuth reports whether an Authorization header value uses the
// node scheme.
func IsNodeAuth(header string) bool {
	scheme, _, _ := strings.Cut(header, " ")
	return strings.EqualFold(scheme, Scheme)
}

// VerifyRequest checks a node's Authorization header for method uri at
// now and returns the signer's public key (the caller checks that it is
// a registered host's). errs.PermissionDenied for a malformed, stale or
// forged header.
func VerifyRequest(header, method, uri string, now time.Time) (string, error) {
	f := strings.Fields(header)
	if len(f) != 4 || !strings.EqualFold(f[0], Scheme) {
		return "", errs.New(errs.PermissionDenied, "malformed node signature: want `%s <key> <time> <signature>`", Scheme)
	}
	pub, sig := f[1], f[3]
	ts, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return "", errs.New(errs.PermissionDenied, "malformed node signature time")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > Skew || d < -Skew {
		return "", errs.New(errs.PermissionDenied, "node signature is stale (clocks more than %s apart?)", Skew)
	}
	if !Verify(pub, message(method, uri, ts), sig) {
		return "", errs.New(errs.PermissionDenied, "bad node signature")
	}
	return pub, nil
}
