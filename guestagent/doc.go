// Package guestagent is the Minions guest agent: the small static program that
// runs inside every VM (binary minions-agent, see cmd/minions-agent).
//
// It has three roles (docs/agent-protocol.md):
//
//   - Stage 1 (Stage1): as /init of the initramfs it loads the virtio
//     modules, mounts the root disk and switches to it.
//   - PID 1 of a minimal image (Run with Options.PID1): mounts, orphan
//     reaping, hostname, lo and eth0 from the kernel command line,
//     /etc/minions/rc, orderly power-off and reboot.
//   - The agent proper (Server): an SSH server, reached over virtio-serial
//     (through guestagent/link) or AF_VSOCK, that runs commands, serves sftp
//     and direct-tcpip, and answers the Minions global requests of
//     guestagent/proto.
//
// The package imports nothing from the host side of the repository and must
// build with CGO_ENABLED=0 (TestImportsNoHostSide checks both).
//
// Known limits: the sftp subsystem runs inside the agent, so as root
// whatever the SSH user; the network setup is IPv4 only; growfs handles
// ext4 only.
package guestagent
