package guestagent

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/guestagent/proto"
)

// ioctl numbers missing from x/sys/unix.
const (
	ioctlFIFREEZE     = 0xc0045877 // _IOWR('X', 119, int)
	ioctlFITHAW       = 0xc0045878 // _IOWR('X', 120, int)
	ioctlExt4ResizeFS = 0x40086610 // _IOW('f', 16, __u64)
)

func sethostname(name string) error {
	if !inGuest() {
		return errNotGuest("set hostname")
	}
	return unix.Sethostname([]byte(name))
}

func settime(t time.Time) error {
	if !inGuest() {
		return errNotGuest("set clock")
	}
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
}

func uptime() time.Duration {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

func readTrim(path string) string {
	b, _ := os.ReadFile(path)
	return strings.TrimSpace(string(b))
}

func (s *Server) ping() (proto.PingReply, error) {
	return proto.PingReply{
		Version:  Version,
		BootID:   readTrim("/proc/sys/kernel/random/boot_id"),
		UptimeMS: uptime().Milliseconds(),
	}, nil
}

func (s *Server) status() (proto.Status, error) {
	st := proto.Status{AgentVersion: Version, UptimeS: uptime().Seconds()}
	st.Hostname, _ = os.Hostname()
	var uts unix.Utsname
	if unix.Uname(&uts) == nil {
		st.Kernel = unix.ByteSliceToString(uts.Release[:])
	}
	if f := strings.Fields(readTrim("/proc/loadavg")); len(f) >= 3 {
		for i := range 3 {
			st.Load[i], _ = strconv.ParseFloat(f[i], 64)
		}
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 2 {
				continue
			}
			kb, _ := strconv.ParseUint(fields[1], 10, 64)
			switch fields[0] {
			case "MemTotal:":
				st.MemTotal = kb * 1024
			case "MemAvailable:":
				st.MemAvailable = kb * 1024
			}
		}
		f.Close()
	}
	var fs unix.Statfs_t
	if unix.Statfs(s.cfg.GrowMount, &fs) == nil {
		st.DiskTotal = fs.Blocks * uint64(fs.Bsize)
		st.DiskFree = fs.Bavail * uint64(fs.Bsize)
	}
	if ents, err := os.ReadDir("/proc"); err == nil {
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err == nil {
				st.Procs++
			}
		}
	}
	if ifaces, err := net.Interfaces(); err == nil {
		for _, ifc := range ifaces {
			if ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				st.Addrs = append(st.Addrs, a.String())
			}
		}
	}
	st.MachineID = readTrim(s.cfg.path("/etc/machine-id"))
	return st, nil
}

func (s *Server) configure(c proto.Configure) error {
	if c.Hostname != nil {
		if !validHostname(*c.Hostname) {
			return fmt.Errorf("invalid hostname %q", *c.Hostname)
		}
		if err := s.cfg.SetHostname(*c.Hostname); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
		if err := writeFileAtomic(s.cfg.path("/etc/hostname"), []byte(*c.Hostname+"\n"), 0o644); err != nil {
			return fmt.Errorf("write hostname: %w", err)
		}
	}
	if c.AuthorizedKeys != nil {
		var b strings.Builder
		for _, k := range c.AuthorizedKeys {
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
				return fmt.Errorf("authorized key %q: %w", k, err)
			}
			b.WriteString(strings.TrimSpace(k) + "\n")
		}
		dir := s.cfg.path("/root/.ssh")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("write authorized keys: %w", err)
		}
		if err := writeFileAtomic(filepath.Join(dir, "authorized_keys"), []byte(b.String()), 0o600); err != nil {
			return fmt.Errorf("write authorized keys: %w", err)
		}
	}
	if c.MachineID != nil {
		if !validMachineID(*c.MachineID) {
			return fmt.Errorf("invalid machine id %q", *c.MachineID)
		}
		if err := writeFileAtomic(s.cfg.path("/etc/machine-id"), []byte(*c.MachineID+"\n"), 0o444); err != nil {
			return fmt.Errorf("write machine id: %w", err)
		}
	}
	if c.TimeUnixNano != nil {
		if err := s.cfg.SetTime(time.Unix(0, *c.TimeUnixNano)); err != nil {
			return fmt.Errorf("set time: %w", err)
		}
	}
	if len(c.Reseed) > 0 {
		if err := addEntropy(c.Reseed); err != nil {
			return fmt.Errorf("reseed: %w", err)
		}
	}
	if c.RegenHostKeys {
		if err := s.regenHostKeys(nil); err != nil {
			return fmt.Errorf("regenerate host keys: %w", err)
		}
	}
	if c.Network != nil {
		if err := s.configureNetwork(*c.Network); err != nil {
			return err
		}
	}
	if len(c.HostKeys) > 0 {
		if err := s.setHostKeys(c.HostKeys); err != nil {
			return err
		}
	}
	return nil
}

// configureNetwork moves eth0 to n's MAC and address (see proto.Network).
func (s *Server) configureNetwork(n proto.Network) error {
	var (
		mac net.HardwareAddr
		err error
	)
	if n.MAC != "" {
		if mac, err = net.ParseMAC(n.MAC); err != nil || len(mac) != 6 || mac[0]&1 != 0 {
			return fmt.Errorf("invalid mac %q: want a unicast ethernet address", n.MAC)
		}
	}
	ip, err := netip.ParsePrefix(n.IP)
	if err != nil || !ip.Addr().Is4() {
		return fmt.Errorf("invalid ip %q: want an IPv4 address with prefix length", n.IP)
	}
	var gw netip.Addr
	if n.Gateway != "" {
		if gw, err = netip.ParseAddr(n.Gateway); err != nil || !gw.Is4() {
			return fmt.Errorf("invalid gateway %q", n.Gateway)
		}
	}
	if n.DNS != "" {
		dns, err := netip.ParseAddr(n.DNS)
		if err != nil {
			return fmt.Errorf("invalid dns %q", n.DNS)
		}
		if err := writeFileAtomic(s.cfg.path("/etc/resolv.conf"), []byte("nameserver "+dns.String()+"\n"), 0o644); err != nil {
			return fmt.Errorf("write resolv.conf: %w", err)
		}
	}
	if err := s.setNetwork(mac, ip, gw); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	s.log.Info("network moved", "ip", ip, "mac", n.MAC)
	return nil
}

// addEntropy mixes seed into the kernel pool and credits it
// (RNDADDENTROPY), falling back to an uncredited write.
func addEntropy(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 8+len(seed))
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(seed) * 8)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(seed))
	copy(buf[8:], seed)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0]))); errno == 0 {
		return nil
	}
	_, err = f.Write(seed)
	return err
}

func (s *Server) regenHostKeys(given map[string][]byte) error {
	// A guest that had host keys or has OpenSSH gets new ones: those
	// given (made by the host), then the missing types made here.
	dir := s.cfg.path("/etc/ssh")
	keys, _ := filepath.Glob(filepath.Join(dir, "ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return err
		}
	}
	if len(keys) == 0 {
		if _, err := os.Stat(filepath.Join(dir, "sshd_config")); err != nil {
			return nil // no OpenSSH
		}
	}
	if err := writeHostKeys(dir, given); err != nil {
		return err
	}
	_, err := makeHostKeys(dir)
	return err
}

// WritableBlockMounts lists the writable filesystems on block devices in
// a mounts file (/proc/self/mounts format), one per device.
func WritableBlockMounts(mountsFile string) ([]Mount, error) {
	data, err := os.ReadFile(mountsFile)
	if err != nil {
		return nil, err
	}
	return parseMounts(string(data)), nil
}

func parseMounts(data string) []Mount {
	var out []Mount
	seen := map[string]bool{}
	for line := range strings.SplitSeq(data, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "/dev/") || seen[f[0]] {
			continue
		}
		rw := false
		for _, o := range strings.Split(f[3], ",") {
			rw = rw || o == "rw"
		}
		if !rw {
			continue
		}
		switch f[2] {
		case "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs":
		default:
			continue
		}
		seen[f[0]] = true
		out = append(out, Mount{Source: f[0], Target: unescapeMount(f[1]), FSType: f[2]})
	}
	return out
}

// unescapeMount undoes the octal escapes of /proc/mounts (\040 for space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func fsIoctl(mountpoint string, req uintptr, arg uintptr) error {
	fd, err := unix.Open(mountpoint, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg); errno != 0 {
		return errno
	}
	return nil
}

// freeze freezes every filesystem of cfg.Mounts. It is idempotent: while
// frozen it re-arms the auto-thaw timer and reports the same list.
func (s *Server) freeze(conn *ssh.ServerConn) ([]string, error) {
	s.freezeMu.Lock()
	defer s.freezeMu.Unlock()
	if s.frozen != nil {
		s.freezer = conn
		s.thawT.Reset(s.cfg.FreezeTimeout)
		return s.frozen, nil
	}
	mounts, err := s.cfg.Mounts()
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	frozen := []string{}
	for _, m := range mounts {
		if err := fsIoctl(m.Target, ioctlFIFREEZE, 0); err != nil {
			for i := len(frozen) - 1; i >= 0; i-- {
				fsIoctl(frozen[i], ioctlFITHAW, 0)
			}
			return nil, fmt.Errorf("freeze %s: %w", m.Target, err)
		}
		frozen = append(frozen, m.Target)
	}
	s.frozen, s.freezer = frozen, conn
	s.thawT = time.AfterFunc(s.cfg.FreezeTimeout, func() {
		s.log.Warn("thawing filesystems after timeout")
		s.thaw()
	})
	s.log.Info("filesystems frozen", "mounts", frozen)
	return frozen, nil
}

// thaw thaws what freeze froze; it is idempotent.
func (s *Server) thaw() error {
	s.freezeMu.Lock()
	defer s.freezeMu.Unlock()
	return s.thawLocked()
}

func (s *Server) thawLocked() error {
	if s.frozen == nil {
		return nil
	}
	s.thawT.Stop()
	var errs []error
	for i := len(s.frozen) - 1; i >= 0; i-- {
		if err := fsIoctl(s.frozen[i], ioctlFITHAW, 0); err != nil && err != unix.EINVAL {
			errs = append(errs, fmt.Errorf("thaw %s: %w", s.frozen[i], err))
		}
	}
	s.frozen, s.freezer = nil, nil
	return errors.Join(errs...)
}

func (s *Server) thawIfOwner(conn *ssh.ServerConn) {
	s.freezeMu.Lock()
	defer s.freezeMu.Unlock()
	if s.frozen != nil && s.freezer == conn {
		s.log.Warn("thawing filesystems: freezing connection closed")
		s.thawLocked()
	}
}

// growMu serializes GrowFS: the boot-time grow and a host's growfs call
// can overlap, and the kernel refuses a second online resize (EBUSY) while
// one runs. The later caller waits and then finds the work done.
var growMu sync.Mutex

// GrowFS grows the ext4 filesystem mounted at mountpoint to the size of its
// block device and returns the filesystem's new size in bytes.
func GrowFS(mountpoint string) (int64, error) {
	growMu.Lock()
	defer growMu.Unlock()
	var st unix.Stat_t
	if err := unix.Stat(mountpoint, &st); err != nil {
		return 0, fmt.Errorf("growfs: %w", err)
	}
	dev, err := blockDevice(st.Dev)
	if err != nil {
		return 0, fmt.Errorf("growfs: %w", err)
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("growfs: %w", err)
	}
	var devSize uint64
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&devSize)))
	unix.Close(fd)
	if errno != 0 {
		return 0, fmt.Errorf("growfs: device size of %s: %w", dev, errno)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(mountpoint, &fs); err != nil {
		return 0, fmt.Errorf("growfs: %w", err)
	}
	if fs.Type != unix.EXT4_SUPER_MAGIC {
		return 0, fmt.Errorf("growfs: %s is not ext4", mountpoint)
	}
	blocks := devSize / uint64(fs.Bsize)
	if err := fsIoctl(mountpoint, ioctlExt4ResizeFS, uintptr(unsafe.Pointer(&blocks))); err != nil {
		return 0, fmt.Errorf("growfs: resize %s to %d blocks: %w", mountpoint, blocks, err)
	}
	if err := unix.Statfs(mountpoint, &fs); err != nil {
		return 0, fmt.Errorf("growfs: %w", err)
	}
	return int64(fs.Blocks) * fs.Bsize, nil
}

// blockDevice finds the /dev node of a device number through sysfs.
func blockDevice(dev uint64) (string, error) {
	uevent := fmt.Sprintf("/sys/dev/block/%d:%d/uevent", unix.Major(dev), unix.Minor(dev))
	data, err := os.ReadFile(uevent)
	if err != nil {
		return "", fmt.Errorf("find block device: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if name, ok := strings.CutPrefix(line, "DEVNAME="); ok {
			return "/dev/" + name, nil
		}
	}
	return "", fmt.Errorf("find block device: no DEVNAME in %s", uevent)
}
