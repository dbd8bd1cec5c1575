// Package vsockcli is the host side of the agent channel: the client a
// host process uses to reach the guest agent (guestagent) inside a VM.
//
// The channel is one of three transports, and all of them look like vsock to
// a caller, hence the name: AF_VSOCK (vhost-vsock), the hybrid-vsock unix
// socket of Cloud Hypervisor, or, for QEMU without vhost-vsock, the VM's
// virtio-serial port behind the per-VM relay (RunRelay), which offers the
// same hybrid-vsock socket. Only the wire protocol shared with the guest
// (guestagent/proto, guestagent/link) is imported from the guest side.
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
