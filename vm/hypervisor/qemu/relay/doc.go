// Package relay is the QEMU driver's per-VM agent relay: on hosts without
// vhost-vsock the guest agent's channel is a virtio-serial port whose host
// end is a unix socket QEMU serves (the chardev), and Run holds that
// socket, speaks the link protocol (guestagent/link) on it and offers Cloud
// Hypervisor's hybrid vsock ("CONNECT <port>\n" / "OK <n>\n") on another
// unix socket, so the host dials every agent the same way whatever the
// driver (vsockcli).
//
// Run executes in its own small process, cmd/minions-relay, started by the
// QEMU driver next to each VM (jailed as the VM's uid) and living as long as
// QEMU does, so VMs outlive the daemon. That process also logs the VM's
// console (vm/consolelog, through descriptors the driver opened), so a VM
// has one helper process, not two. It is per VM, not per host, so a crash
// or a kill touches one VM only, and the jail keeps each VM's sockets
// reachable only by its own uid. Its imports are kept to the standard
// library, yamux and the link protocol: every package initialised there is
// paid once per VM (see BenchmarkMemoryPerVM in e2e).
package relay
