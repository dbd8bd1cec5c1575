// Package proto holds the wire names and JSON payloads of the Minions calls
// the guest agent answers (docs/agent-protocol.md). Both the agent and the
// host side (vsockcli) import it; it imports nothing but the standard
// library.
package proto
