// Package tinyvm builds the smallest bootable fixture for driver tests: a
// Debian cloud kernel (fetched with apt-get download into a cache
// directory) and an initramfs whose /init is a static Go program, built by
// the test, that prints ReadyMarker on the serial console and then a tick
// line every half second. It has no disks, no network and no agent.
//
// The init also obeys two kernel parameters: "tinyvm.reboot" makes it
// reboot the machine after each ready marker, "tinyvm.poweroff" makes it
// power off. Tests use them to check what a driver does on guest reboot and
// power-off.
package tinyvm
