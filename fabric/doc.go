// Package fabric is the control plane <-> node carrier: NATS.
//
// It embeds a nats-server (JetStream on, stored under the state dir) or
// connects to an external NATS cluster by URL, and it owns the subject
// scheme and the per-node permissions:
//
//   - minions.node.<id>.>   requests to node <id>; only that node may
//     subscribe (and answer them);
//   - minions.status.<id>   node <id>'s heartbeats and status; only that
//     node may publish there;
//   - minions.admin.>       the control plane's own subjects; no node may
//     publish or subscribe.
//
// A node authenticates with its own NKey: the control plane stores the
// node's public key (from the join, see service.JoinHost) and the embedded
// server's authenticator (Config.NodeKey) maps a key that signs the
// server's nonce to that node's permissions. The control plane connects
// with a key minted at start, kept in memory, with no restrictions.
//
// This package is the one home of github.com/nats-io/*.
package fabric
