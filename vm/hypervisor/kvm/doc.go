// Package kvm finds out whether hardware virtualisation really works on this
// host and picks the hypervisor driver to use.
//
// Probe does not trust the presence of /dev/kvm: it creates a VM through the
// KVM ioctl API and runs guest code in it, first in real mode, then in 64-bit
// long mode with paging, then a sequence of the privileged operations a Linux
// guest kernel performs early in boot (control register, MSR and descriptor
// table writes, CPUID, a locked CMPXCHG16B on a live page-table page, a page
// fault handled by the guest's own IDT). Each
// stage checks the exits KVM reports and the values the guest computed. A
// host on which any stage fails, or on which the privileged stage runs so
// slowly that a kernel could not boot in useful time, is reported as not
// usable, with the reason.
//
// Why CMPXCHG16B: on hosts that are themselves guests using PVM, /dev/kvm
// works for simple code, but the host shadows the guest's page tables, so a
// write to a page-table page traps and KVM must emulate the instruction; its
// emulator cannot emulate CMPXCHG16B. Debian's cloud kernel dies exactly
// there ("KVM internal error. Suberror: 1 ... emulation failure" on
// f0 48 0f c7, in SLUB) after running for about a minute, roughly 150 times
// slower than TCG. The probe reproduces that in about 10 ms.
//
// ProbeQEMU is the slow, definitive check (minions doctor --deep): it boots a
// real kernel under qemu -accel kvm and waits for it to reach userspace.
//
// Select is pure: it turns what was found into a driver choice and says why.
package kvm
