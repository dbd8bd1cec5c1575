package guestagent

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/guestagent/proto"
)

// Re-identification: a guest restored from a warm template (or forked)
// wakes up as the template. reidentify makes it a VM of its own, in an
// order that matters: the RNG is reseeded before any key is made, the clock
// is set before files are written, the host key is swapped last among the
// identity steps so a failure before it leaves the host's pin valid, and
// the network moves while the files are written (the agent channel does
// not use it). The reply comes when all of it is in place in the guest;
// the flush of the files to the guest's disk follows (flushLater).

// ioctlRNDRESEEDCRNG makes the kernel reseed its CRNG now (_IO('R', 7)),
// so the output of every reader, vDSO getrandom states included, depends on
// the entropy just added and no longer on the template's pool.
const ioctlRNDRESEEDCRNG = 0x5207

// maxEntropy bounds Reidentify.Entropy (RNDADDENTROPY takes a page).
const maxEntropy = 512

// The system edges of reidentify, replaced by the unit tests (which run
// without a guest kernel of their own); hostname and clock are Config's.
var (
	reseedKernel   = func(b []byte) error { return guarded("reseed rng", func() error { return reseedKernelRNG(b) }) }
	reconfigureNet = func(mac net.HardwareAddr, ip netip.Prefix, gw netip.Addr) error {
		return guarded("reconfigure eth0", func() error { return reconfigureEth0(mac, ip, gw) })
	}
	reloadServices = func(root string) []string {
		if !inGuest() {
			return nil // nothing of this machine's is reloaded
		}
		return reloadGuestServices(root)
	}
)

// guarded runs f only inside a Minions guest (guard.go).
func guarded(what string, f func() error) error {
	if !inGuest() {
		return errNotGuest(what)
	}
	return f()
}

// identity is a checked proto.Reidentify.
type identity struct {
	hostname, machineID string
	mac                 net.HardwareAddr // nil: keep
	ip                  netip.Prefix     // invalid: no network change
	gw, dns             netip.Addr
	keys                string // authorized_keys content
	entropy             []byte
	now                 time.Time
	sshKeys             map[string][]byte // host-made sshd keys (PEM) by type
	agentKey            ssh.Signer        // host-made agent key; nil: make one
	agentKeyPEM         []byte
}

// parseIdentity checks r. The sshd host keys are checked (and kept) only
// for a guest with OpenSSH (sshd): one without has no use for them, and
// parsing them (a P-256 key among them) is 10-30 ms of a clone's vCPU
// right after a restore under TCG.
func parseIdentity(r proto.Reidentify, sshd bool) (identity, error) {
	id := identity{hostname: r.Hostname, machineID: r.MachineID, entropy: r.Entropy}
	if !validHostname(r.Hostname) {
		return id, fmt.Errorf("invalid hostname %q", r.Hostname)
	}
	if !validMachineID(r.MachineID) {
		return id, fmt.Errorf("invalid machine id %q", r.MachineID)
	}
	if len(r.Entropy) < proto.MinEntropy || len(r.Entropy) > maxEntropy {
		return id, fmt.Errorf("entropy is %d bytes, want %d to %d", len(r.Entropy), proto.MinEntropy, maxEntropy)
	}
	if r.TimeUnixNano <= 0 {
		return id, errors.New("no wall clock time")
	}
	id.now = time.Unix(0, r.TimeUnixNano)
	var err error
	if r.MAC != "" {
		if id.mac, err = net.ParseMAC(r.MAC); err != nil || len(id.mac) != 6 || id.mac[0]&1 != 0 {
			return id, fmt.Errorf("invalid mac %q: want a unicast ethernet address", r.MAC)
		}
	}
	if r.IP != "" {
		if id.ip, err = netip.ParsePrefix(r.IP); err != nil || !id.ip.Addr().Is4() {
			return id, fmt.Errorf("invalid ip %q: want an IPv4 address with prefix length", r.IP)
		}
	}
	if r.Gateway != "" {
		if id.gw, err = netip.ParseAddr(r.Gateway); err != nil || !id.gw.Is4() || !id.ip.IsValid() {
			return id, fmt.Errorf("invalid gateway %q (needs an ip)", r.Gateway)
		}
	}
	if r.DNS != "" {
		if id.dns, err = netip.ParseAddr(r.DNS); err != nil {
			return id, fmt.Errorf("invalid dns %q", r.DNS)
		}
	}
	var b strings.Builder
	for _, k := range r.AuthorizedKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil || strings.ContainsAny(strings.TrimSpace(k), "\n\r") {
			return id, fmt.Errorf("invalid authorized key %q", k)
		}
		b.WriteString(strings.TrimSpace(k) + "\n")
	}
	id.keys = b.String()
	if sshd {
		for t, pemKey := range r.SSHHostKeys {
			if !slices.Contains(hostKeyTypes, t) {
				return id, fmt.Errorf("ssh host key type %q: want one of %v", t, hostKeyTypes)
			}
			k, err := ssh.ParseRawPrivateKey([]byte(pemKey))
			if err != nil {
				return id, fmt.Errorf("ssh host key %s: %v", t, err)
			}
			if keyType(k) != t {
				return id, fmt.Errorf("ssh host key %s is a %s key", t, keyType(k))
			}
			if id.sshKeys == nil {
				id.sshKeys = map[string][]byte{}
			}
			id.sshKeys[t] = []byte(pemKey)
		}
	}
	if r.AgentHostKey != "" {
		k, err := ssh.ParseRawPrivateKey([]byte(r.AgentHostKey))
		if err != nil || keyType(k) != "ed25519" {
			return id, fmt.Errorf("agent host key: want an ed25519 private key (%v)", err)
		}
		if id.agentKey, err = ssh.NewSignerFromKey(k); err != nil {
			return id, fmt.Errorf("agent host key: %v", err)
		}
		id.agentKeyPEM = []byte(r.AgentHostKey)
	}
	return id, nil
}

// keyType names a parsed private key as hostKeyTypes do ("" for others).
func keyType(k any) string {
	switch k := k.(type) {
	case *ed25519.PrivateKey:
		return "ed25519"
	case ed25519.PrivateKey:
		return "ed25519"
	case *ecdsa.PrivateKey:
		if k.Curve == elliptic.P256() {
			return "ecdsa"
		}
	}
	return ""
}

// leftoverGlobs are template state that must not survive into a clone
// (guest paths): DHCP leases, saved random seeds. The old machine's
// journal directories are added at run time.
var leftoverGlobs = []string{
	"/var/lib/dhcp/*.leases", "/var/lib/dhcp/*.lease",
	"/var/lib/dhclient/*.leases", "/var/lib/dhclient/*.lease",
	"/var/lib/NetworkManager/*.lease",
	"/var/lib/systemd/network/*.lease", "/run/systemd/netif/leases/*",
	"/var/lib/udhcpc/*",
	"/var/lib/systemd/random-seed", "/var/lib/urandom/random-seed", "/var/lib/random-seed",
	"/var/lib/systemd/credential.secret",
}

// reidentify carries out r (see the comment at the top of the file).
// journald, which keeps the machine-id it started with, is stopped first
// (what is logged from then on waits in its sockets) and restarted under
// the new identity once the guest is quiet (journalLater).
//
// received is when the request arrived (before it was decoded): the clock
// is set to the request's time plus the time since (ClockFromReceipt), and
// the first step's time counts from there.
func (s *Server) reidentify(r proto.Reidentify, received time.Time) (proto.ReidentifyReply, error) {
	begin := received
	cpu := sampleCPU("/proc/stat")
	_, noSSH := os.Stat(s.cfg.path("/etc/ssh"))
	id, err := parseIdentity(r, noSSH == nil)
	if err != nil {
		return proto.ReidentifyReply{}, err
	}
	checked := time.Now()
	paused := pauseJournal(s.cfg.Root)
	reply, err := s.becomeIdentity(id, begin, checked, paused > 0)
	if paused > 0 || err == nil {
		s.journalLater(paused)
	}
	if err == nil {
		reply.CPU = cpu.cpuSince("/proc/stat")
	}
	return reply, err
}

// becomeIdentity is reidentify's work once id is checked (begin: when the
// request was taken, checked: when it was checked; paused: journald was
// stopped since).
func (s *Server) becomeIdentity(id identity, begin, checked time.Time, paused bool) (proto.ReidentifyReply, error) {
	reply := proto.ReidentifyReply{Steps: []string{"check request"}, StepMillis: []int64{checked.Sub(begin).Milliseconds()}}
	last := checked
	step := func(name string) {
		reply.Steps = append(reply.Steps, name)
		reply.StepMillis = append(reply.StepMillis, time.Since(last).Milliseconds())
		last = time.Now()
	}
	if paused {
		step("stop journald")
	}

	reseed := reseedKernel
	if s.cfg.ReseedRNG != nil {
		reseed = s.cfg.ReseedRNG
	}
	if err := reseed(id.entropy); err != nil {
		return reply, fmt.Errorf("reseed rng: %w", err)
	}
	step("reseed rng")
	// The host's time when it sent the request, moved on by what the
	// guest has spent since it received it (seconds under load).
	if err := s.cfg.SetTime(id.now.Add(time.Since(begin))); err != nil {
		return reply, fmt.Errorf("set clock: %w", err)
	}
	reply.ClockFromReceipt = true
	step("set clock")
	if err := s.cfg.SetHostname(id.hostname); err != nil {
		return reply, fmt.Errorf("set hostname: %w", err)
	}
	step("set hostname")
	// The network moves while the files are written: the move waits on
	// the guest's CPU, the first write after a restore on its disk (a
	// journal commit the saved machine had in flight). Both are done
	// before the reply.
	netDone := make(chan error, 1)
	var netMillis int64 // written before netDone, read after it
	if id.ip.IsValid() || id.mac != nil {
		go func() {
			start := time.Now()
			err := s.setNetwork(id.mac, id.ip, id.gw)
			netMillis = max(1, time.Since(start).Milliseconds())
			netDone <- err
		}()
	} else {
		netDone <- nil
	}
	waitNet := sync.OnceValue(func() error { return <-netDone })
	defer waitNet() // a failed write returns only once the move is over
	if err := writeFileNoSync(s.cfg.path("/etc/hostname"), []byte(id.hostname+"\n"), 0o644); err != nil {
		return reply, fmt.Errorf("write hostname: %w", err)
	}
	step("write hostname")

	oldID := readTrim(s.cfg.path("/etc/machine-id"))
	if err := writeFileNoSync(s.cfg.path("/etc/machine-id"), []byte(id.machineID+"\n"), 0o444); err != nil {
		return reply, fmt.Errorf("write machine id: %w", err)
	}
	dbus := s.cfg.path("/var/lib/dbus/machine-id")
	if st, err := os.Lstat(dbus); err == nil && st.Mode().IsRegular() {
		if err := writeFileNoSync(dbus, []byte(id.machineID+"\n"), 0o444); err != nil {
			return reply, fmt.Errorf("write dbus machine id: %w", err)
		}
	}
	step("set machine id")

	globs := leftoverGlobs
	if validMachineID(oldID) && oldID != id.machineID {
		globs = append(globs[:len(globs):len(globs)], "/var/log/journal/"+oldID, "/run/log/journal/"+oldID)
	}
	for _, g := range globs {
		matches, _ := filepath.Glob(s.cfg.path(g))
		for _, p := range matches {
			if err := os.RemoveAll(p); err != nil {
				return reply, fmt.Errorf("remove leftover: %w", err)
			}
			reply.Removed = append(reply.Removed, "/"+strings.TrimPrefix(strings.TrimPrefix(p, s.cfg.Root), "/"))
		}
	}
	step("remove template leftovers")

	if err := s.regenHostKeys(id.sshKeys); err != nil {
		return reply, fmt.Errorf("regenerate ssh host keys: %w", err)
	}
	pubs, _ := filepath.Glob(s.cfg.path("/etc/ssh/ssh_host_*_key.pub"))
	for _, p := range pubs {
		if b, err := os.ReadFile(p); err == nil {
			reply.SSHHostKeys = append(reply.SSHHostKeys, strings.TrimSpace(string(b)))
		}
	}
	if len(pubs) > 0 {
		step("regenerate sshd host keys")
	}

	dir := s.cfg.path("/root/.ssh")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return reply, fmt.Errorf("write authorized keys: %w", err)
	}
	if err := writeFileNoSync(filepath.Join(dir, "authorized_keys"), []byte(id.keys), 0o600); err != nil {
		return reply, fmt.Errorf("write authorized keys: %w", err)
	}
	step("write authorized keys")

	key, err := s.newAgentHostKey(id.agentKey, id.agentKeyPEM)
	if err != nil {
		return reply, fmt.Errorf("regenerate agent host key: %w", err)
	}
	reply.AgentHostKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	step("regenerate agent host key")

	if id.dns.IsValid() {
		if err := writeFileNoSync(s.cfg.path("/etc/resolv.conf"), []byte("nameserver "+id.dns.String()+"\n"), 0o644); err != nil {
			return reply, fmt.Errorf("write resolv.conf: %w", err)
		}
	}
	if err := waitNet(); err != nil {
		return reply, fmt.Errorf("network: %w", err)
	}
	reply.NetworkMillis = netMillis
	if id.ip.IsValid() || id.mac != nil {
		step("move eth0 to its own mac and ip, announce it")
	}
	// One flush for every file above, after the reply (see flushLater).
	s.flushLater(s.cfg.path("/etc"))
	reply.FlushPending = true
	s.log.Info("re-identified", "hostname", id.hostname, "ip", id.ip, "mac", id.mac.String(), "steps", len(reply.Steps))
	return reply, nil
}

// afterReidentify makes running services pick up the new identity once
// the reply is on its way (reloadServices: sshd re-reads its host keys
// where it must): their reload competes with the host's next calls for
// the guest's vCPU, and nothing of the VM's identity depends on it.
func (s *Server) afterReidentify() {
	done := reloadServices(s.cfg.Root)
	if len(done) > 0 {
		s.log.Info("services reloaded after re-identification", "done", strings.Join(done, ", "))
	}
}

// journalLater has journald restarted under the new machine-id once the
// guest is quiet (at most journalWaitMax): pid is the journald that
// reidentify stopped (0: none), which never stays stopped longer.
func (s *Server) journalLater(pid int) {
	wait, restart := waitQuiet, restartJournal // the hooks as they are now (tests swap them)
	go func() {
		start := time.Now()
		wait(quietFor, journalWaitMax, nil)
		if done := restart(s.cfg.Root, pid); done != "" {
			s.log.Info("journald restarted under the new identity", "done", done, "waited_ms", time.Since(start).Milliseconds())
		}
	}()
}

// writeFileNoSync replaces path atomically (written aside, renamed) but
// does not flush it: reidentify writes several files and flushes once
// (syncFS). A file torn by a power cut before that is either the old one or
// the new one; a torn agent key is replaced at the next start.
func writeFileNoSync(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// flushFS flushes the filesystem holding a directory; replaced by tests.
var flushFS = syncFS

// flushLater flushes the filesystem holding dir in the background: the
// identity files reidentify wrote are in the guest's page cache when it
// replies, and from there every reader in the guest (sshd, a login, exec)
// sees them; the flush only makes them survive a crash of the guest. It
// runs in the agent whether or not anybody waits for it (the host's
// connection may be gone); WaitFlushed waits for it, and shutdown does.
//
// What a crash of the guest (or a kill -9 of its hypervisor) before the
// flush completes means: the disk may still hold the earlier identity's
// files (each file is either the old or the new one: written aside and
// renamed), so a later boot of that VM comes up with the template's or the
// fork source's hostname file, machine-id, sshd keys and owner keys, and
// an agent key the host no longer pins (the start then fails as "agent not
// ready": destroy it and fork or create again). The window is the flush
// itself, which starts once the guest has been quiet for a second (the
// user's first command goes first) and at most 2 s after the reply
// (waitQuiet), and takes a few hundred ms.
func (s *Server) flushLater(dir string) {
	done := make(chan struct{})
	s.flushMu.Lock()
	prev := s.flushing
	s.flushing = done
	s.flushMu.Unlock()
	wait, flush := waitQuiet, flushFS // the hooks as they are now (tests swap them)
	go func() {
		defer close(done)
		if prev != nil {
			<-prev
		}
		wait(quietFor, flushWaitMax, s.hurry)
		start := time.Now()
		if err := flush(dir); err != nil {
			s.log.Warn("flush after re-identification", "dir", dir, "err", err)
			return
		}
		s.log.Info("identity flushed", "dir", dir, "duration_ms", time.Since(start).Milliseconds())
	}()
}

// WaitFlushed waits until the flushes started by re-identification so far
// are done, or ctx ends.
func (s *Server) WaitFlushed(ctx context.Context) error {
	s.hurryOnce.Do(func() { close(s.hurry) }) // no more waiting for quiet
	s.flushMu.Lock()
	done := s.flushing
	s.flushMu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// syncFS flushes the filesystem holding dir (syncfs(2)).
func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Syncfs(fd)
}

// swapSigner is the agent's host key, replaceable while the server runs:
// connections already open keep the key they were made with. A handshake
// that overlaps the swap may sign with the new key after announcing the old
// one and fail; the host dials again (it re-pins after reidentify anyway).
type swapSigner struct {
	mu sync.RWMutex
	s  ssh.Signer
}

func (w *swapSigner) get() ssh.Signer {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.s
}

func (w *swapSigner) set(s ssh.Signer) {
	w.mu.Lock()
	w.s = s
	w.mu.Unlock()
}

// PublicKey implements ssh.Signer.
func (w *swapSigner) PublicKey() ssh.PublicKey { return w.get().PublicKey() }

// Sign implements ssh.Signer.
func (w *swapSigner) Sign(r io.Reader, data []byte) (*ssh.Signature, error) {
	return w.get().Sign(r, data)
}

// newAgentHostKey writes a new ed25519 host key to HostKeyPath (given,
// with its PEM, or made here) and makes the server offer it to new
// connections.
func (s *Server) newAgentHostKey(given ssh.Signer, givenPEM []byte) (ssh.PublicKey, error) {
	signer, data := given, givenPEM
	if signer == nil {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		block, err := ssh.MarshalPrivateKey(priv, "minions-agent")
		if err != nil {
			return nil, err
		}
		if signer, err = ssh.NewSignerFromKey(priv); err != nil {
			return nil, err
		}
		data = pem.EncodeToMemory(block)
	}
	if err := writeFileNoSync(s.cfg.HostKeyPath, data, 0o600); err != nil {
		return nil, err
	}
	s.signer.set(signer)
	return signer.PublicKey(), nil
}

// reseedKernelRNG credits entropy to the kernel pool (RNDADDENTROPY, or
// an uncredited write where that is refused) and forces a CRNG reseed.
func reseedKernelRNG(entropy []byte) error {
	if err := addEntropy(entropy); err != nil {
		return err
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), ioctlRNDRESEEDCRNG, 0); errno != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return nil
}

// reconfigureEth0 gives eth0 mac (if not nil) and ip (if valid) as its
// only IPv4 address, the default route via gw (if valid), and announces
// the address with gratuitous ARP so neighbours (the host bridge) forget
// the template's MAC for it.
func reconfigureEth0(mac net.HardwareAddr, ip netip.Prefix, gw netip.Addr) error {
	eth, err := net.InterfaceByName("eth0")
	if err != nil {
		return err
	}
	running := eth.Flags&net.FlagUp != 0 && eth.Flags&net.FlagRunning != 0
	if mac != nil && eth.HardwareAddr.String() != mac.String() {
		bounced, err := SetLinkMAC(eth, mac)
		if err != nil {
			return err
		}
		running = running && !bounced
	} else {
		mac = eth.HardwareAddr
	}
	if !ip.IsValid() {
		return nil
	}
	// Old addresses go first: removing a subnet's primary address also
	// removes the secondaries, which the new one would be.
	addrs, err := eth.Addrs()
	if err != nil {
		return err
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok || n.IP.To4() == nil {
			continue
		}
		old, _ := netip.AddrFromSlice(n.IP.To4())
		bits, _ := n.Mask.Size()
		if p := netip.PrefixFrom(old, bits); p != ip {
			if err := DelAddr(eth, p); err != nil {
				return err
			}
		}
	}
	if err := AddAddr(eth, ip); err != nil {
		return err
	}
	if !running {
		if err := LinkUp(eth); err != nil {
			return err
		}
	}
	if gw.IsValid() {
		if err := AddDefaultRoute(eth, gw); err != nil {
			return err
		}
	}
	// A link just brought up drops what is sent before its carrier is on
	// (the kernel turns it on a little later): wait for that, briefly.
	for deadline := time.Now().Add(2 * time.Second); !running && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if ifc, err := net.InterfaceByIndex(eth.Index); err != nil || ifc.Flags&net.FlagRunning != 0 {
			break
		}
	}
	// Twice: the first may be lost while the host side learns the port.
	if err := SendGratuitousARP(eth.Index, mac, ip.Addr(), 2); err != nil {
		return err
	}
	return nil
}

// SetLinkMAC changes the interface's MAC. virtio-net changes it live (and
// tells the device, which then filters for the new one); a driver that
// cannot is taken down for the change.
func SetLinkMAC(ifc *net.Interface, mac net.HardwareAddr) (bounced bool, err error) {
	set := func() error {
		msg := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(ifc.Index)}
		return nlRequest(unix.RTM_NEWLINK, 0, append(structBytes(&msg), nlAttr(unix.IFLA_ADDRESS, mac)...))
	}
	err = set()
	if errors.Is(err, unix.EBUSY) {
		bounced = true
		down := unix.IfInfomsg{Family: unix.AF_UNSPEC, Index: int32(ifc.Index), Change: unix.IFF_UP}
		if err = nlRequest(unix.RTM_NEWLINK, 0, structBytes(&down)); err == nil {
			err = set()
		}
		if uerr := LinkUp(ifc); err == nil {
			err = uerr
		}
	}
	if err != nil {
		return bounced, fmt.Errorf("set %s mac %s: %w", ifc.Name, mac, err)
	}
	return bounced, nil
}

// DelAddr removes an IPv4 address from the interface (EADDRNOTAVAIL is
// success).
func DelAddr(ifc *net.Interface, p netip.Prefix) error {
	msg := unix.IfAddrmsg{Family: unix.AF_INET, Prefixlen: uint8(p.Bits()), Index: uint32(ifc.Index)}
	a := p.Addr().As4()
	body := append(structBytes(&msg), nlAttr(unix.IFA_LOCAL, a[:])...)
	if err := nlRequest(unix.RTM_DELADDR, 0, body); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove address %s from %s: %w", p, ifc.Name, err)
	}
	return nil
}

// garpPacket is the ARP body (without the Ethernet header) of a gratuitous
// ARP request announcing that ip is at mac: sender and target IP are both
// ip, target MAC zero.
func garpPacket(mac net.HardwareAddr, ip netip.Addr) []byte {
	a := ip.As4()
	p := []byte{
		0, 1, // hardware type: Ethernet
		8, 0, // protocol: IPv4
		6, 4, // address lengths
		0, 1, // request
	}
	p = append(p, mac...)
	p = append(p, a[:]...)
	p = append(p, 0, 0, 0, 0, 0, 0)
	return append(p, a[:]...)
}

// SendGratuitousARP broadcasts garpPacket on the interface with index
// ifindex.
func SendGratuitousARP(ifindex int, mac net.HardwareAddr, ip netip.Addr, times int) error {
	const ethPARP = 0x0806
	proto := uint16(ethPARP<<8&0xff00 | ethPARP>>8) // network byte order
	// Protocol 0: the socket only sends (no receive hook on every ARP
	// frame); the frames' protocol is the address's.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("gratuitous arp: %w", err)
	}
	// Closed in the background: closing a packet socket waits for an RCU
	// grace period (synchronize_net), about 10 ms of a TCG guest's time
	// that the caller need not wait for; the frames are sent by then.
	defer func() { go unix.Close(fd) }()
	to := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifindex, Halen: 6}
	copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	pkt := garpPacket(mac, ip)
	for range times {
		if err := unix.Sendto(fd, pkt, 0, to); err != nil {
			return fmt.Errorf("gratuitous arp: %w", err)
		}
	}
	return nil
}

// sshdSession is the per-connection binary of OpenSSH >= 9.8, whose
// listener loads the host keys once and hands them to it.
const sshdSession = "/usr/lib/openssh/sshd-session"

// reloadGuestServices makes running services pick up the new identity
// where the guest has them (best effort, each reported when done).
//
// sshd: OpenSSH before 9.8 (Debian 12 has 9.2) re-executes itself for each
// connection and that child loads the host keys from /etc/ssh: the new
// keys serve the next connection with no reload. A SIGHUP (sshd re-execs,
// its listening socket closed meanwhile) left a Debian clone's sshd not
// listening for seconds under TCG. Only where the listener holds the keys
// (OpenSSH >= 9.8, sshd-session installed) is it sent SIGHUP.
//
// journald is restarted apart from these (journalLater).
func reloadGuestServices(root string) []string {
	var done []string
	if root != "" && root != "/" {
		return nil
	}
	if _, err := os.Stat(sshdSession); err == nil {
		if b, err := os.ReadFile("/run/sshd.pid"); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				if unix.Kill(pid, unix.SIGHUP) == nil {
					done = append(done, "reload sshd")
				}
			}
		}
	}
	return done
}

// restartUnit queues a restart of a systemd unit (systemctl --no-block)
// and does not wait for it.
func restartUnit(unit string) error {
	cmd := exec.Command("systemctl", "--no-block", "restart", unit)
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	return nil
}

// setNetwork is the config's SetNetwork, or the guarded default.
func (s *Server) setNetwork(mac net.HardwareAddr, ip netip.Prefix, gw netip.Addr) error {
	if s.cfg.SetNetwork != nil {
		return s.cfg.SetNetwork(mac, ip, gw)
	}
	return reconfigureNet(mac, ip, gw)
}
