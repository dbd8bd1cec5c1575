# Probe stage "real": 16-bit real mode at 0:0x1000. Port 0x10 <- sum 1..100.
	.code16
	xor %ax,%ax
	mov $100,%cx
1:	add %cx,%ax
	loop 1b
	mov $0x10,%dx
	out %ax,(%dx)
	hlt
