// Package images provides what a VM boots: the guest kernel, the initramfs
// that starts the agent, and a catalogue of versioned, immutable root
// filesystem images.
//
// Kernel: EnsureKernel installs Debian's cloud kernel into a private
// directory (apt-get download + dpkg-deb -x, no maintainer scripts), keeps
// the bzImage, extracts the uncompressed vmlinux for PVH boot, and writes
// modules.dep (Debian's package ships none).
//
// Initramfs: EnsureInitramfs writes a cpio "newc" archive (CpioWriter) with
// the agent as /init, the virtio and vsock modules in load order, and the
// list /etc/minions/modules the agent's stage 1 loads. Files are named by
// a hash of their inputs and never rewritten.
//
// Root filesystems: Catalog builds ("minimal": busybox + agent, about half a
// second, every applet linked, shims for what busybox lacks (nohup), wget
// -T fixed (busybox.go); "debian": debootstrap bookworm with systemd and sshd, minutes the
// first time, cached after; "ubuntu": debootstrap noble the same way, with
// Ubuntu's archive keyring; "fedora": dnf --installroot from a Fedora
// mirror, or a Fedora root filesystem tarball plus dnf; "nixos": nix-build
// of a NixOS system from a configuration Minions writes, its closure copied
// into the tree with its registration, a system profile and /sbin/init),
// lists, resolves ("minimal" is the newest
// version, "minimal@20261127-001530-ab12" one version), bakes a new agent
// into a new version and removes images nothing uses. Every image is a raw
// ext4 file, mode 0444, published by renaming a finished directory: a failed
// build leaves nothing, and a file a VM uses is never written again. VM disks
// are copy-on-write children of these files (package vm/disk).
//
// Before ubuntu and fedora builds download anything, the mirror is probed
// (MirrorProbeTimeout): an unreachable one is Unavailable ("mirror X
// unreachable: ..."), one without the release FailedPrecondition. Package
// signatures are always checked; a missing keyring or key is a
// FailedPrecondition naming the file.
//
// Host tools used: apt-get, apt-cache, dpkg-deb, mkfs.ext4, debugfs,
// debootstrap and chroot (debian, ubuntu), dnf, tar and chroot (fedora),
// nix-build, nix-store and nix-instantiate plus the host's depmod (nixos), /bin/busybox from busybox-static
// (minimal only). A missing tool is a FailedPrecondition or Unavailable
// error naming the package to install.
package images
