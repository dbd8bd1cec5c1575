package qemu

import "strconv"

// tcgRAMPadKiB is added to the RAM of a machine under TCG, so that its
// RAM block's length is not a multiple of 64 pages (256 KiB).
//
// QEMU 7.2 syncs a RAM block's migration dirty bitmap on a fast path when
// the block's length is a multiple of 64 pages, and that path clears the
// dirty bits without resetting the TCG TLB (fixed upstream in QEMU 9.0,
// "physmem: Fix migration dirty bitmap coherency with TCG memory
// access"). A vCPU then keeps writing through TLB entries that stay
// writable, those writes set no dirty bit, and a live migration loses
// them: the guest on the target found stale kernel memory and crashed
// (a NULL or random function pointer in a timer, an RCU callback or the
// idle loop) or hung, in about 1 of 10 migrations (TestLiveMigration,
// TestLiveMigrationHops). With any other length QEMU syncs page by page
// and resets the TLB. KVM tracks dirty pages itself: no pad.
const tcgRAMPadKiB = 8

// setRAMPad sets the pad for a new machine (machineFor).
func (m *machine) setRAMPad() {
	m.RAMPadKiB = 0
	if m.Accel == AccelTCG {
		m.RAMPadKiB = tcgRAMPadKiB
	}
}

// adoptRAM gives m the RAM size of old, the machine whose state or RAM
// it takes over (a restore, a clone, an incoming migration): a machine
// saved before the pad keeps its exact size.
func (m *machine) adoptRAM(old machine) { m.RAMPadKiB = old.RAMPadKiB }

// ramBytes is the size of the guest RAM.
func (m machine) ramBytes() int64 { return int64(m.MemoryMiB)<<20 + int64(m.RAMPadKiB)<<10 }

// ramSize is ramBytes as a QEMU size ("256M", "262152K").
func (m machine) ramSize() string {
	if m.RAMPadKiB == 0 {
		return strconv.Itoa(m.MemoryMiB) + "M"
	}
	return strconv.FormatInt(m.ramBytes()>>10, 10) + "K"
}
