// Package jail confines the host processes of one VM (the hypervisor and
// its helpers, such as QEMU's agent relay) so that a guest escape is not
// host root:
//
//   - each VM's processes run as their own unprivileged uid and gid
//     (Config.UIDBase + a per-VM index, the VM's vsock CID), with no
//     supplementary groups beyond the ones a device needs (/dev/kvm);
//   - each sees only its own files: it runs in a mount namespace of its
//     own where the directories holding Minions' state (Config.Hide: the
//     state dir with the store, keys and every VM's disks, and the run dir)
//     are covered by an empty tmpfs, and only this VM's files (its run dir,
//     console log, disks, kernel, initramfs and the base images its disks
//     are backed by) are bind-mounted back at the same paths, read-only
//     where they are not its own;
//   - each runs in a cgroup of its own (Config.CgroupParent/<vm id>, or
//     Config.CgroupParent/Config.Installation/<vm id>: a group per
//     installation, whose empty leftovers SweepCgroups removes) with
//     memory max = guest memory + Config.MemoryOverheadMiB, a CPU quota of
//     its vCPU count, a CPU weight of SharesPerCPU per vCPU and a pids
//     limit, on cgroup v1 (and hybrid) hosts and pure v2 hosts alike
//     (the cgroup file system, written directly). The parent's CPU weight is kept
//     at the sum of its VMs' (see balanceAncestors): at the kernel's
//     default it would give all VMs together the share of one host process.
//
// # Why a mount namespace and not a chroot
//
// Firecracker's jailer chroots into a directory holding the VMM binary and
// the VM's files. QEMU is dynamically linked against dozens of libraries
// and reads firmware from /usr/share, so a chroot would have to mirror a
// large, distribution-specific part of the file system. Over-mounting only
// the directories that hold secrets and other VMs' data hides exactly what
// must be hidden, keeps every path in QEMU's argv (and in qcow2 backing
// file names) valid, and leaves the system files QEMU needs in place.
// Everything else on the host is protected by ordinary permissions against
// a uid that owns nothing but its own VM's files.
//
// # How a process is started
//
// The QEMU driver uses Config.Start: on an OS thread of its own process
// that the Go runtime discards afterwards (locked, never unlocked), it
// leaves the mount namespace and builds the mounts, joins the cgroup (v1: the
// thread's tasks; v2: the child is cloned into it), checks the files as
// the VM's uid (the thread's file system ids) and sets no_new_privs; then
// it forks the target from that thread with the VM's uid, gid and groups
// (set by the child before exec). Namespace, cgroup, file system ids and
// no_new_privs are per thread and inherited by a child, so the target
// starts exactly as jailed as through the launcher below, without the
// launcher's exec and Go runtime start on every VM start. On a pure v2
// host whose kernel or seccomp filter refuses clone3 into a cgroup
// (jailexec.CloneIntoCgroupRefused), Config.Start starts each process
// through the launcher instead, for the rest of the daemon's life, and
// logs that once; doctor names the mode (CgroupJoinMode).
//
// The v2 paths are proved on v1 (hybrid) test hosts against the real
// cgroup2 hierarchy, mounted at /sys/fs/cgroup in a private mount
// namespace of a test child (v2_linux_test.go): v1 or v2 is a matter of
// the mounts only.
//
// The launcher, used by `minions doctor`, the fallback above and anything
// that cannot run Start: Go cannot run code between fork and exec, so the caller (root) starts
// Config.Command (the minions binary's hidden "jail-exec" command) in a
// new mount namespace with a Plan as its only argument. Main joins the
// cgroup, builds the mounts, drops to the VM's uid and gid (setgroups,
// setresgid, setresuid, no_new_privs) and execs the target, which keeps
// the PID: the caller identifies the hypervisor by it as before. Files the
// target needs and cannot open itself (a TAP, /dev/vhost-vsock, a
// migration stream) are opened by root and passed as descriptors.
package jail
