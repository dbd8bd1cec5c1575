// Package jailexec is the jail launcher of package jail: the code that
// runs between the fork and the exec of a jailed VM process (QEMU, the
// agent relay). It joins the VM's cgroup, covers the hidden directories in
// a mount namespace of its own, binds the VM's files back, drops to the
// VM's uid and execs. It imports only the standard library, x/sys and
// errs (no cgroup library: it joins a cgroup by writing cgroup.procs), so
// the small minions-relay binary can be the launcher: starting the
// minions binary for it cost every VM start an exec of tens of MiB and
// the package initialisation of all of Minions.
package jailexec
