// Command testagent is a stand-in for the guest agent used by the images
// tests. As PID 1 of the initramfs it does the agent's stage 1 (mount
// /dev, /proc, /sys; load /etc/minions/modules; mount root= and switch
// root); on the root filesystem it prints what it finds and powers off.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

var start = time.Now()

// sysFinitModule is finit_module(2) on amd64.
const sysFinitModule = 313

// say prints to the console: stdout as PID 1, /dev/console when run as a
// systemd service (whose stdout is the journal).
func say(format string, args ...any) {
	w := os.Stdout
	if os.Getpid() != 1 {
		if c, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
			defer c.Close()
			w = c
		}
	}
	fmt.Fprintf(w, "TESTAGENT "+format+"\n", args...)
}

func main() {
	if _, err := os.Stat("/minions-initramfs"); err == nil {
		if err := stage1(); err != nil {
			say("stage1 error: %v", err)
		}
		off()
	}
	stage2()
	off()
}

func stage1() error {
	for _, m := range []struct{ src, dst, typ string }{
		{"devtmpfs", "/dev", "devtmpfs"}, {"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"},
	} {
		if err := syscall.Mount(m.src, m.dst, m.typ, 0, ""); err != nil && err != syscall.EBUSY {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	list, err := os.ReadFile("/etc/minions/modules")
	if err != nil {
		return err
	}
	t0 := time.Now()
	n := 0
	for _, p := range strings.Fields(string(list)) {
		if err := loadModule(filepath.Join("/", p)); err != nil {
			return fmt.Errorf("load %s: %w", p, err)
		}
		n++
	}
	say("stage1 loaded %d modules in %v", n, time.Since(t0).Round(time.Millisecond))
	var dev string
	for i := 0; i < 200; i++ { // virtio probing is asynchronous
		if _, err := os.Stat("/dev/vda"); err == nil {
			dev = "/dev/vda"
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if dev == "" {
		return fmt.Errorf("no /dev/vda after loading modules")
	}
	if err := syscall.Mount(dev, "/newroot", "ext4", 0, ""); err != nil {
		return fmt.Errorf("mount root: %w", err)
	}
	for _, d := range []string{"/dev", "/proc", "/sys"} {
		if err := syscall.Mount(d, "/newroot"+d, "", syscall.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s: %w", d, err)
		}
	}
	if err := os.Chdir("/newroot"); err != nil {
		return err
	}
	if err := syscall.Mount(".", "/", "", syscall.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := syscall.Chroot("."); err != nil {
		return err
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	say("stage1 switch_root after %v", time.Since(start).Round(time.Millisecond))
	return syscall.Exec("/sbin/init", []string{"/sbin/init"}, os.Environ())
}

func loadModule(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	params := []byte{0}
	_, _, e := syscall.Syscall(sysFinitModule, f.Fd(), uintptr(unsafe.Pointer(&params[0])), 0)
	if e != 0 && e != syscall.EEXIST {
		return e
	}
	return nil
}

var version = "1"

func stage2() {
	osr, _ := os.ReadFile("/etc/os-release")
	id := ""
	for _, l := range strings.Split(string(osr), "\n") {
		if v, ok := strings.CutPrefix(l, "ID="); ok {
			id = strings.Trim(v, `"`)
		}
	}
	_, bbErr := os.Stat("/bin/busybox")
	self, _ := os.Readlink("/sbin/init")
	// The root filesystem must be writable.
	werr := os.WriteFile("/root/written", []byte("ok"), 0o644)
	say("rootfs version=%s os=%s busybox=%v init->%s writable=%v", version, id, bbErr == nil, self, werr == nil)
	say("done")
	if cl, _ := os.ReadFile("/proc/cmdline"); strings.Contains(string(cl), "testagent.stay") && os.Getpid() != 1 {
		for {
			time.Sleep(time.Hour) // keep the VM up (manual checks)
		}
	}
}

func off() {
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_RESTART)
	select {}
}
