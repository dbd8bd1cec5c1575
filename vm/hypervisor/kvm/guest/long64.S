# Probe stage "long": 64-bit arithmetic and a store through 4-level paging.
# Entered in 64-bit mode at 0x1000. Port 0x10 <- 5050; rax ends as
# 0x1_0000_0000 + 5050, also stored at 0x8000.
	.code64
	mov $100,%rcx
	xor %eax,%eax
1:	add %rcx,%rax
	loop 1b
	movabs $0x100000000,%rbx
	add %rbx,%rax
	mov %rax,0x8000
	mov $0x10,%dx
	out %eax,(%dx)
	hlt
