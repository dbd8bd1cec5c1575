// Package vsockcli is the host side of the guest agent channel.
//
// Dial and WaitReady connect to a VM's agent (docs/agent-protocol.md) at a
// hypervisor.AgentEndpoint: over AF_VSOCK, or over a unix socket speaking
// Cloud Hypervisor's hybrid vsock handshake ("CONNECT <port>\n" /
// "OK <n>\n"). The connection is SSH; Client wraps it with the Minions calls
// (ping, status, configure, fsfreeze, fsthaw, growfs, shutdown), command
// execution, sftp and TCP forwarding, and exposes the raw *ssh.Client for
// the SSH gateway, which relays user channels to it one to one.
//
// On QEMU without vhost-vsock the hybrid vsock socket is offered by the
// VM's agent relay (vm/hypervisor/qemu/relay), so the host dials every agent
// the same way whatever the driver.
//
// Errors are classed with internal/errs: Unavailable when the agent cannot
// be reached, FailedPrecondition when the agent refused a call.
package vsockcli
