// Package config is the host's configuration file
// (/etc/minions/config.toml, TOML, unknown keys refused): its schema with
// units and defaults (Defaults), its validation (Validate, errors are
// errs.InvalidArgument naming the key) and what it derives for the
// subsystems (the VM jail, the guests' DNS and egress rules, resources,
// the wildcard certificate's DNS provider). It reads the file and the
// secret files it names, and overlays `serve`'s flags (ServeFlags,
// Effective). The daemon and the host commands (hostcmd, backup) use it.
package config
