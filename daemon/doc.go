// Package daemon is the composition root: it builds every subsystem from
// configuration with explicit arguments (store, images, network, disks,
// hypervisor driver, service) and, for `minions serve`, runs the listeners
// under one errgroup with a graceful shutdown. Only this package knows the
// concrete drivers. It also contributes `serve` and the daemon's helper
// commands (jail-exec, vsock, tui, config) to the CLI tree; the commands
// that act on the installation directly (init, image, doctor, backup) live
// in hostcmd and backup, above this package. The QEMU driver's per-VM
// helpers (agent relay, console logger) are the separate minions-relay
// binary (vm/hypervisor/qemu/relay), found by local.RelayBinary.
package daemon
