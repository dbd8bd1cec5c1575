// Package e2e holds the end-to-end tests: the real minions binary, real
// QEMU VMs, real bridge/TAP/nftables, real SQLite, as a user would run
// them. They need root and qemu-system-x86_64; TestMain moves the whole
// test process into a network namespace it creates, so nothing touches the
// host's own network, and removes it afterwards.
package e2e
