// Package link turns one raw byte stream between host and guest (a
// virtio-serial port) into many streams.
//
// The protocol (docs/agent-protocol.md) is a one-line handshake followed by
// a yamux session:
//
//	host:  MINIONS-LINK-HELLO <nonce>\n   (nonce: 16 lowercase hex digits)
//	guest: MINIONS-LINK-OK <nonce>\n
//
// Both sides discard whatever precedes the line they wait for, so bytes left
// over from an earlier session (a host that went away mid-stream, a guest
// that rebooted) are skipped. The guest then runs a yamux server session and
// the host a yamux client session on the rest of the stream; every stream
// the host opens is one SSH connection to the agent.
//
// The guest side is Serve; the host side is Dial. This package is imported
// by the guest agent and must stay free of host-side dependencies.
package link
