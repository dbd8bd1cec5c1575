// Package kvm finds out whether hardware virtualisation really works on this
// host and picks the hypervisor driver to use.
//
// Probe does not trust the presence of /dev/kvm: it creates a VM through the
// KVM ioctl API and runs guest code in it, first in real mode, then in 64-bit
// long mode with paging, then a sequence of the privileged operations a Linux
// guest kernel performs early in boot (control register, MSR and descriptor
// table writes, CPUID, a page fault handled by the guest's own IDT). Each
// stage checks the exits KVM reports and the values the guest computed. A
// host on which any stage fails, or on which the privileged stage runs so
// slowly that a kernel could not boot in useful time, is reported as not
// usable, with the reason.
//
// ProbeQEMU is the slow, definitive check (minions doctor --deep): it boots a
// real kernel under qemu -accel kvm and waits for it to reach userspace.
//
// Select is pure: it turns what was found into a driver choice and says why.
package kvm
