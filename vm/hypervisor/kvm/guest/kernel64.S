# Probe stage "kernel": what a Linux kernel does early, in miniature.
# Loaded at guest physical (= virtual) 0x1000 and entered in 64-bit mode
# with paging on and rsp=0x7000. The host prepared a GDT at 0x500 (null,
# code 0x08, data 0x10), its pointer at 0x580, and an IDT at 0x600 (pointer
# at 0x590) whose 32 vectors point to the stubs at 0x1800 + 16*vector.
#
# Ports: 0x10 <- MSR round trip (low then high half), then the two low
# halves written by CMPXCHG16B into the page directory, 0x12 <- exception
# vector, 0x13 <- faulting rip, 0x11 <- cr2. A correct run ends with #PF
# (vector 14) at the load from 0x400000, which is not mapped.
	.code64
	lgdt 0x580
	lidt 0x590
	mov $0x10,%ax
	mov %ax,%ds
	mov %ax,%es
	mov %ax,%ss
	pushq $0x08
	lea 1f(%rip),%rax
	push %rax
	lretq			# reload CS from the new GDT
1:	xor %eax,%eax
	cpuid
	mov $0xc0000102,%ecx	# IA32_KERNEL_GS_BASE
	mov $0x12345678,%eax
	mov $0xffff8880,%edx	# canonical kernel address
	wrmsr
	xor %eax,%eax
	xor %edx,%edx
	rdmsr
	mov %edx,%ebx
	mov $0x10,%dx
	out %eax,(%dx)
	mov %ebx,%eax
	out %eax,(%dx)
	swapgs
	swapgs
	mov %cr4,%rax
	mov %rax,%cr4
	mov $1000,%ecx		# 1000 address-space switches, each with a store
2:	mov %cr3,%rax
	mov %rax,%cr3
	incq 0x8000
	loop 2b
	# An atomic 16-byte compare-and-exchange on the page directory the
	# vCPU is running on (Linux's SLUB does this on struct pages). With
	# EPT/NPT it runs natively; a hypervisor that shadows guest page
	# tables traps the write and must emulate the instruction, and KVM's
	# emulator cannot do CMPXCHG16B: "emulation failure", as seen when a
	# stock kernel boots on such a host. Entry 256 is not used (P=0).
	xor %eax,%eax
	xor %edx,%edx
	movabs $0x5a5a5a5a5a5a5a5a,%rbx
	movabs $0x2468ace02468ace0,%rcx
	lock cmpxchg16b 0x4800
	mov $0x10,%dx
	mov 0x4800,%eax
	out %eax,(%dx)
	mov 0x4808,%eax
	out %eax,(%dx)
	mov 0x400000,%rax	# not mapped: #PF through the guest's own IDT
	hlt			# not reached

	.org 0x800		# exception stubs, 16 bytes each
	.irp v,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.balign 16
	mov $\v,%bl
	.if \v == 8 || (\v >= 10 && \v <= 14) || \v == 17 || \v == 21 || \v == 29 || \v == 30
	jmp witherr
	.else
	jmp report
	.endif
	.endr
witherr: add $8,%rsp		# drop the error code
report:	movzbl %bl,%eax
	mov $0x12,%dx
	out %eax,(%dx)		# vector
	mov (%rsp),%rax
	mov $0x13,%dx
	out %eax,(%dx)		# faulting rip
	mov %cr2,%rax
	mov $0x11,%dx
	out %eax,(%dx)		# faulting address
	hlt
