package nodeagent

import "slices"

// Capabilities a node announces in its heartbeats (Heartbeat.Caps), for
// calls whose older versions would misread a request rather than refuse
// it. A control plane upgraded before its nodes asks an old node only
// what it understands: an export_bundle with a target address (To) that
// an old source ignores would leave the target waiting for a bundle that
// never comes (the move then fails after its deadline and rolls back).
const (
	// CapPeerBundle: export_bundle honours To (a node-to-node bundle,
	// transfer_peer_bundle.go).
	CapPeerBundle = "peer-bundle"
)

// Capabilities are this build's (sent in every heartbeat).
var Capabilities = []string{CapPeerBundle}

// SetCaps records the capabilities node r announced in its latest
// heartbeat (nil caps: a heartbeat without any, from a node older than
// capabilities). Until the first call the node's capabilities are
// unknown and every call is tried (a node-to-node stream that finds no
// path falls back by itself).
func (r *Remote) SetCaps(caps []string) {
	c := slices.Clone(caps)
	if c == nil {
		c = []string{}
	}
	r.caps.Store(&c)
}

// lacks reports whether r's node is known not to have capability c.
func (r *Remote) lacks(c string) bool {
	p := r.caps.Load()
	return p != nil && !slices.Contains(*p, c)
}
