// Package backup is `minions backup create` and `minions backup restore`:
// a consistent archive of one host's installation (an online copy of the
// store, the config file, host keys, certificates and, with --with-disks,
// every VM's disks and the images they use) and its restore onto a fresh
// host, checked against the archive's manifest before anything is
// installed. It is a host-only command: it opens the installation through
// the composition root (daemon.Open) and sits above it; main adds Command
// to the CLI tree.
package backup
