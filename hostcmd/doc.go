// Package hostcmd holds the host-only commands that act on this host's
// installation directly rather than through a daemon: `init` (directories,
// keys, bridge, nftables, systemd units), `image` (build, bake, remove and
// choose OS images in the local catalogue, or a daemon's with --host) and
// `doctor` (what this host can run and what is missing). They build what
// they need through the composition root (daemon.Open, config.Config) and
// sit above it: main adds Commands to the CLI tree; daemon never imports
// this package.
package hostcmd
