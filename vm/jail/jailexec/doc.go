// Package jailexec is the jail launcher of package jail: the code that
// runs between the fork and the exec of a jailed VM process (QEMU, the
// agent relay). It joins the VM's cgroup, covers the hidden directories in
// a mount namespace of its own, binds the VM's files back, drops to the
// VM's uid and execs. It imports only the standard library, x/sys and
// errs (no cgroup library: it joins a cgroup by writing cgroup.procs), so
// the small minions-relay binary can be the launcher: starting the
// minions binary for it cost every VM start an exec of tens of MiB and
// the package initialisation of all of Minions.
//
// Start does the same work without a launcher process, on a thread of the
// caller that is thrown away afterwards, and forks the VM process from it
// (v1: the thread joins the cgroup's tasks; v2: the child is cloned into
// the cgroup). The QEMU driver uses Start; Main and Exec remain the
// launcher for `minions doctor` and any caller that cannot use Start.
package jailexec
