// Package disk creates and manages the copy-on-write disks VMs boot from.
//
// A VM's root disk is a child of an immutable base image: a qcow2 overlay
// whose backing file is the base (CreateOverlay, works on any filesystem and
// with both hypervisor drivers), or a reflink copy (Clone, on XFS or btrfs;
// it falls back to a sparse copy elsewhere). Neither ever writes to the base,
// and creating an overlay takes the same few milliseconds whatever the size
// of the base.
//
// The functions shell out to qemu-img (found in PATH) for everything that
// understands image formats; Clone and FreeBytes use system calls only.
// All functions are safe for concurrent use on different files. A file that
// a running hypervisor holds open is protected by QEMU's image locking:
// Grow on such a disk fails with errs.FailedPrecondition.
//
// Errors are wrapped around the classes of internal/errs: a missing file is
// NotFound, an existing destination AlreadyExists, a bad size or format
// InvalidArgument, a missing qemu-img Unavailable.
package disk
