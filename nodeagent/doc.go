// Package nodeagent is the host side of the cluster: the agent each node
// runs (`minions node`, and in-process inside `minions serve` for the
// control plane's own host) and its counterpart in the control plane.
//
// Run registers the node and heartbeats its capacity (vCPUs, memory, disk
// free) and version over the fabric (package fabric) every
// Config.Interval; Listen is the control plane's receiver.
//
// ServeEngine carries a node's engine.Engine over NATS and Remote is the
// control plane's engine.Engine that calls it: request/reply on the node's
// own subjects (see wire.go for the subject scheme), the engine's JSON
// types as bodies, errors with their errs class and message, progress
// steps streamed before the result, the caller's ctx deadline applied on
// the node (no request timeout cuts a long call), exits published on the
// node's status subjects and handed to Remote's ExitFunc. DialAgent's
// stream rides two subjects of the node with ordering checks and a byte
// window (stream.go); the fabric's per-node permissions confine all of it
// to the node it belongs to.
//
// Direct streams (direct.go): with RemoteConfig.DirectTLS set and a node
// serving a Direct listener, DialAgent asks the node over the fabric for
// a one-time ticket (single use, 10 s, bound to the VM) and dials the
// node's listener over TLS 1.3 with the control plane's client
// certificate from the fabric CA, pinning the node's ephemeral
// certificate to the fingerprint the node sent over its own subjects;
// the node splices the connection to the VM's agent channel. A node
// without a listener, or unreachable directly, is reached over NATS.
// Direct is the default where available: on loopback it moves bytes
// with less CPU and a shorter round trip than the NATS stream (see
// TestAgentBench and TestStreamBench). DialPort (tunnel.go) reaches
// ports of the node's own running VMs through one direct connection per
// node carrying SSH direct-tcpip channels; CopyConsole (console.go)
// copies and follows a console log over a stream of the node's subjects.
//
// Remote.Agent lends one pooled, authenticated agent connection per VM of
// the node (agentpool.go), as engine.Local does for its own VMs: a new
// session to a VM on another host costs an SSH channel, not a ticket, a
// TLS handshake, a node-signed login and a guest SSH handshake (see
// TestAgentSessionBench). The service still authorizes every call before
// Agent.
package nodeagent
