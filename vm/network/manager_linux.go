package network

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/vishvananda/netlink"
)

const ipForwardPath = "/proc/sys/net/ipv4/ip_forward"

// Manager applies Config to the network namespace it runs in. It needs
// CAP_NET_ADMIN there. A Manager is safe for concurrent use; its methods
// are serialised. Several processes may use Managers on one host: every
// nftables change is one atomic netlink batch.
type Manager struct {
	cfg Config
	log *slog.Logger
	mu  sync.Mutex

	// adoptLinks lets AddPort register an existing interface of any kind
	// (tests use veth pairs as stand-ins for VMs). In production only
	// TAPs are adopted.
	adoptLinks bool
}

// New returns a Manager for cfg (empty fields take their defaults). It
// does no I/O. An invalid cfg is errs.InvalidArgument. log may be nil.
func New(cfg Config, log *slog.Logger) (*Manager, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Manager{cfg: cfg, log: log.With("component", "network")}, nil
}

// Config returns the effective configuration (defaults applied).
func (m *Manager) Config() Config { return m.cfg }

// Setup makes the host match the config: the bridge exists, is up and has
// the gateway address (and no other IPv4 address); IPv4 forwarding is on;
// the Minions nftables tables are as Ruleset renders them for the ports
// already registered. It is idempotent: when everything is in place it
// changes nothing (no rule is rewritten). When the tables differ in any way
// they are replaced in one atomic batch that keeps the registered ports.
// An existing interface with the bridge's name that is not a bridge is
// errs.FailedPrecondition.
func (m *Manager) Setup(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	if err := m.ensureBridge(); err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	if err := ensureForwarding(); err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network setup: nftables: %w", err)
	}
	ports, err := m.knownPorts(c)
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	// TAPs made before ports had a group (PortGroup) get it now.
	for _, p := range ports {
		if l, err := netlink.LinkByName(p.TAP); err == nil && uint32(l.Attrs().Group) != PortGroup(m.cfg.Table) {
			if err := netlink.LinkSetGroup(l, int(PortGroup(m.cfg.Table))); err != nil {
				return fmt.Errorf("network setup: group of %s: %w", p.TAP, err)
			}
		}
	}
	want := desiredTables(m.cfg, ports)
	drift, err := tableDrift(c, want)
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	if len(drift) == 0 {
		m.log.Debug("nftables up to date", "table", m.cfg.Table)
		return nil
	}
	if err := replaceTables(c, want); err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	m.log.Info("nftables installed", "table", m.cfg.Table, "ports", len(ports), "reason", drift[0])
	return nil
}

func (m *Manager) ensureBridge() error {
	name := m.cfg.Bridge
	link, err := netlink.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		// A fixed MAC: otherwise the bridge takes the lowest MAC of its
		// ports, and changes it (breaking the VMs' ARP caches) as VMs come
		// and go.
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: derivedMAC("bridge:" + name)}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("create bridge %s: %w", name, err)
		}
		m.log.Info("bridge created", "bridge", name)
		if link, err = netlink.LinkByName(name); err != nil {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
	} else if err != nil {
		return fmt.Errorf("bridge %s: %w", name, err)
	}
	if link.Type() != "bridge" {
		return errs.New(errs.FailedPrecondition, "bridge %s: interface exists as a %s", name, link.Type())
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("bridge %s up: %w", name, err)
	}
	want := m.gatewayNet()
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("bridge %s addresses: %w", name, err)
	}
	for _, a := range addrs {
		if a.IPNet.String() != want.String() {
			if err := netlink.AddrDel(link, &a); err != nil {
				return fmt.Errorf("bridge %s: remove stale address %s: %w", name, a.IPNet, err)
			}
			m.log.Info("stale bridge address removed", "bridge", name, "addr", a.IPNet.String())
		}
	}
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: want}); err != nil {
		return fmt.Errorf("bridge %s: address %s: %w", name, want, err)
	}
	return nil
}

func (m *Manager) gatewayNet() *net.IPNet {
	gw := m.cfg.Gateway().As4()
	return &net.IPNet{IP: net.IP(gw[:]), Mask: net.CIDRMask(m.cfg.Subnet.Bits(), 32)}
}

func ensureForwarding() error {
	b, err := os.ReadFile(ipForwardPath)
	if err != nil {
		return fmt.Errorf("ipv4 forwarding: %w", err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(ipForwardPath, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable ipv4 forwarding: %w", err)
	}
	return nil
}

func forwardingOn() bool {
	b, err := os.ReadFile(ipForwardPath)
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// AddPort attaches a VM's TAP: it creates p.TAP as a persistent TAP owned
// by root if it does not exist (QEMU opens it later; vhost is QEMU's
// business), registers p's IP and MAC as the only identity allowed in
// through it, then enslaves it to the bridge with port isolation on and
// brings it up. It is idempotent; calling it again with a new IP or MAC
// replaces the old identity. If it fails it undoes what it did.
//
// Errors: errs.InvalidArgument for a bad port; errs.FailedPrecondition when
// Setup has not run; errs.AlreadyExists when another port already has the
// IP or MAC, or when an interface named p.TAP exists and is not a TAP.
func (m *Manager) AddPort(ctx context.Context, p Port) (err error) {
	if err := p.Validate(m.cfg.Subnet); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("add port %s: %w", p.TAP, err)
	}
	var undo []func()
	defer func() {
		if err != nil {
			for _, u := range slices.Backward(undo) {
				u()
			}
		}
	}()

	br, err := netlink.LinkByName(m.cfg.Bridge)
	if err != nil {
		return errs.New(errs.FailedPrecondition, "add port %s: bridge %s missing (run init): %w", p.TAP, m.cfg.Bridge, err)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("add port %s: nftables: %w", p.TAP, err)
	}
	existing, err := m.readPorts(c)
	if err != nil {
		return fmt.Errorf("add port %s: %w", p.TAP, err)
	}
	var stale []Port
	present := false
	for _, e := range existing {
		switch {
		case e.TAP == p.TAP && e.IP == p.IP && bytes.Equal(e.MAC, p.MAC):
			present = true
		case e.TAP == p.TAP:
			stale = append(stale, e)
		case e.IP == p.IP:
			return errs.New(errs.AlreadyExists, "add port %s: address %s belongs to port %s", p.TAP, p.IP, e.TAP)
		case bytes.Equal(e.MAC, p.MAC):
			return errs.New(errs.AlreadyExists, "add port %s: mac %s belongs to port %s", p.TAP, p.MAC, e.TAP)
		}
	}

	link, err := netlink.LinkByName(p.TAP)
	switch {
	case errors.As(err, new(netlink.LinkNotFoundError)):
		tap := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: p.TAP},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_DEFAULTS | netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
			Owner:     0,
			Group:     0,
		}
		// No fork while netlink holds the new TAP's queue open: a child
		// forked meanwhile would keep it attached until it execs, and the
		// hypervisor's own attach would fail with EBUSY.
		syscall.ForkLock.RLock()
		err := netlink.LinkAdd(tap)
		syscall.ForkLock.RUnlock()
		if err != nil {
			return fmt.Errorf("add port %s: create tap: %w", p.TAP, err)
		}
		undo = append(undo, func() { _ = netlink.LinkDel(tap) })
		if link, err = netlink.LinkByName(p.TAP); err != nil {
			return fmt.Errorf("add port %s: %w", p.TAP, err)
		}
	case err != nil:
		return fmt.Errorf("add port %s: %w", p.TAP, err)
	case link.Type() != "tuntap" && !m.adoptLinks:
		return errs.New(errs.AlreadyExists, "add port %s: interface exists and is a %s, not a tap", p.TAP, link.Type())
	}

	// Register the identity before the port joins the bridge, so no frame
	// from it is ever bridged unchecked.
	if !present || len(stale) > 0 {
		set := portsSet(m.cfg.Table)
		if len(stale) > 0 {
			if err := c.SetDeleteElements(set, portElements(stale)); err != nil {
				return fmt.Errorf("add port %s: %w", p.TAP, err)
			}
		}
		if err := c.SetAddElements(set, portElements([]Port{p})); err != nil {
			return fmt.Errorf("add port %s: %w", p.TAP, err)
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("add port %s: register identity: %w", p.TAP, err)
		}
		if !present {
			undo = append(undo, func() {
				_ = c.SetDeleteElements(set, portElements([]Port{p}))
				_ = c.Flush()
			})
		}
	}
	// The identity also goes on the interface, so Setup can restore the
	// registration after the tables were flushed (nftables.service restart).
	if err := netlink.LinkSetAlias(link, portAlias(p)); err != nil {
		return fmt.Errorf("add port %s: alias: %w", p.TAP, err)
	}
	// The group scopes the bridge table's drop rules to this bridge's TAPs
	// (PortGroup); set before the port joins the bridge.
	if err := netlink.LinkSetGroup(link, int(PortGroup(m.cfg.Table))); err != nil {
		return fmt.Errorf("add port %s: group: %w", p.TAP, err)
	}
	if err := netlink.LinkSetMaster(link, br); err != nil {
		return fmt.Errorf("add port %s: join bridge %s: %w", p.TAP, m.cfg.Bridge, err)
	}
	if err := netlink.LinkSetIsolated(link, true); err != nil {
		return fmt.Errorf("add port %s: isolate: %w", p.TAP, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("add port %s: up: %w", p.TAP, err)
	}
	m.log.Info("port added", "tap", p.TAP, "ip", p.IP.String(), "mac", p.MAC.String())
	return nil
}

// RemovePort deletes the interface tap (if it is a TAP or a port of the
// bridge) and its registered identity. It is idempotent: removing an
// unknown port succeeds.
func (m *Manager) RemovePort(ctx context.Context, tap string) error {
	if err := validIfname(tap); err != nil {
		return errs.New(errs.InvalidArgument, "remove port: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("remove port %s: %w", tap, err)
	}
	if err := m.deleteLink(tap); err != nil {
		return fmt.Errorf("remove port %s: %w", tap, err)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("remove port %s: nftables: %w", tap, err)
	}
	ports, err := m.readPorts(c)
	if errors.Is(err, errs.FailedPrecondition) {
		return nil // no table, nothing registered
	} else if err != nil {
		return fmt.Errorf("remove port %s: %w", tap, err)
	}
	var mine []Port
	for _, p := range ports {
		if p.TAP == tap {
			mine = append(mine, p)
		}
	}
	if len(mine) > 0 {
		if err := c.SetDeleteElements(portsSet(m.cfg.Table), portElements(mine)); err != nil {
			return fmt.Errorf("remove port %s: %w", tap, err)
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("remove port %s: unregister: %w", tap, err)
		}
	}
	m.log.Info("port removed", "tap", tap)
	return nil
}

func (m *Manager) deleteLink(name string) error {
	link, err := netlink.LinkByName(name)
	if errors.As(err, new(netlink.LinkNotFoundError)) {
		return nil
	} else if err != nil {
		return err
	}
	ours := link.Type() == "tuntap" || m.adoptLinks
	if br, err := netlink.LinkByName(m.cfg.Bridge); err == nil && link.Attrs().MasterIndex == br.Attrs().Index {
		ours = true
	}
	if !ours {
		return errs.New(errs.FailedPrecondition, "interface %s is a %s outside bridge %s; not removing it", name, link.Type(), m.cfg.Bridge)
	}
	if err := netlink.LinkDel(link); err != nil && !errors.As(err, new(netlink.LinkNotFoundError)) {
		return fmt.Errorf("delete link: %w", err)
	}
	return nil
}

// Ports returns the registered ports, sorted by TAP. Without the tables it
// is errs.FailedPrecondition.
func (m *Manager) Ports(ctx context.Context) ([]Port, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list ports: %w", err)
	}
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("list ports: nftables: %w", err)
	}
	ports, err := m.readPorts(c)
	if err != nil {
		return nil, fmt.Errorf("list ports: %w", err)
	}
	return ports, nil
}

// Teardown removes the registered ports' interfaces, both tables and the
// bridge. IPv4 forwarding is left on (other software may rely on it). It
// is idempotent.
func (m *Manager) Teardown(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("network teardown: %w", err)
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("network teardown: nftables: %w", err)
	}
	ports, err := m.readPorts(c)
	if err != nil && !errors.Is(err, errs.FailedPrecondition) {
		return fmt.Errorf("network teardown: %w", err)
	}
	for _, p := range ports {
		if err := m.deleteLink(p.TAP); err != nil {
			return fmt.Errorf("network teardown: port %s: %w", p.TAP, err)
		}
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyINet, nftables.TableFamilyBridge} {
		t := &nftables.Table{Family: fam, Name: m.cfg.Table}
		c.AddTable(t) // add, then delete: no error when it is absent
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("network teardown: delete tables: %w", err)
	}
	if link, err := netlink.LinkByName(m.cfg.Bridge); err == nil {
		if link.Type() != "bridge" {
			return errs.New(errs.FailedPrecondition, "network teardown: %s is a %s, not a bridge", m.cfg.Bridge, link.Type())
		}
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("network teardown: delete bridge: %w", err)
		}
	}
	m.log.Info("network removed", "bridge", m.cfg.Bridge, "table", m.cfg.Table)
	return nil
}

// portAlias is the interface alias recording a port's identity.
func portAlias(p Port) string { return fmt.Sprintf("minions %s %s", p.IP, p.MAC) }

func parsePortAlias(tap, alias string) (Port, bool) {
	f := strings.Fields(alias)
	if len(f) != 3 || f[0] != "minions" {
		return Port{}, false
	}
	ip, err1 := netip.ParseAddr(f[1])
	mac, err2 := net.ParseMAC(f[2])
	if err1 != nil || err2 != nil {
		return Port{}, false
	}
	return Port{TAP: tap, IP: ip, MAC: mac}, true
}

// knownPorts returns the registered ports together with the ports of the
// bridge whose alias records an identity but which are not registered (their
// registration was lost with the tables). Invalid or conflicting aliases
// are ignored.
func (m *Manager) knownPorts(c *nftables.Conn) ([]Port, error) {
	ports, err := m.readPorts(c)
	if err != nil && !errors.Is(err, errs.FailedPrecondition) {
		return nil, err
	}
	br, err := netlink.LinkByName(m.cfg.Bridge)
	if err != nil {
		return ports, nil
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if a.MasterIndex != br.Attrs().Index {
			continue
		}
		p, ok := parsePortAlias(a.Name, a.Alias)
		if !ok || p.Validate(m.cfg.Subnet) != nil {
			continue
		}
		clash := false
		for _, q := range ports {
			if q.TAP == p.TAP || q.IP == p.IP || bytes.Equal(q.MAC, p.MAC) {
				clash = true
			}
		}
		if !clash {
			m.log.Debug("port identity found in interface alias", "tap", p.TAP, "ip", p.IP.String())
			ports = append(ports, p)
		}
	}
	slices.SortFunc(ports, func(a, b Port) int { return strings.Compare(a.TAP, b.TAP) })
	return ports, nil
}

// portsSet names the bridge table's ports set for element operations.
func portsSet(table string) *nftables.Set {
	return &nftables.Set{
		Table:         &nftables.Table{Family: nftables.TableFamilyBridge, Name: table},
		Name:          setPorts,
		KeyType:       nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr),
		Concatenation: true,
	}
}

func portElements(ps []Port) []nftables.SetElement {
	out := make([]nftables.SetElement, len(ps))
	for i, p := range ps {
		out[i] = nftables.SetElement{Key: portElem(p).key}
	}
	return out
}

// readPorts returns the registered ports; errs.FailedPrecondition when the
// bridge table or its set is missing.
func (m *Manager) readPorts(c *nftables.Conn) ([]Port, error) {
	ok, err := hasSet(c, nftables.TableFamilyBridge, m.cfg.Table, setPorts)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "nftables set bridge %s %s missing (run init)", m.cfg.Table, setPorts)
	}
	elems, err := c.GetSetElements(portsSet(m.cfg.Table))
	if err != nil {
		return nil, fmt.Errorf("read ports: %w", err)
	}
	var ports []Port
	for _, e := range elems {
		if p, ok := decodePortElem(e.Key); ok {
			ports = append(ports, p)
		}
	}
	slices.SortFunc(ports, func(a, b Port) int { return strings.Compare(a.TAP, b.TAP) })
	return ports, nil
}

func hasTable(c *nftables.Conn, fam nftables.TableFamily, name string) (bool, error) {
	tables, err := c.ListTablesOfFamily(fam)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == name && t.Family == fam {
			return true, nil
		}
	}
	return false, nil
}

func hasSet(c *nftables.Conn, fam nftables.TableFamily, table, name string) (bool, error) {
	if ok, err := hasTable(c, fam, table); !ok || err != nil {
		return false, err
	}
	sets, err := c.GetSets(&nftables.Table{Family: fam, Name: table})
	if err != nil {
		return false, fmt.Errorf("list nftables sets: %w", err)
	}
	for _, s := range sets {
		if s.Name == name {
			return true, nil
		}
	}
	return false, nil
}

// replaceTables installs want in one batch: each table is added (so the
// delete cannot fail), deleted with everything in it, and built again.
func replaceTables(c *nftables.Conn, want []tableSpec) error {
	var setID uint32 = 0x6d6e0000 // "mn": unlikely to meet another batch's IDs
	for _, t := range want {
		tbl := &nftables.Table{Family: t.family, Name: t.name}
		c.AddTable(tbl)
		c.DelTable(tbl)
		c.AddTable(tbl)
		ids := map[string]uint32{}
		for _, s := range t.sets {
			setID++
			set := &nftables.Set{Table: tbl, ID: setID, Name: s.name, KeyType: s.keyType, Concatenation: s.concat}
			elems := make([]nftables.SetElement, len(s.elems))
			for i, e := range s.elems {
				elems[i] = nftables.SetElement{Key: e.key}
			}
			if err := c.AddSet(set, elems); err != nil {
				return fmt.Errorf("nftables set %s: %w", s.name, err)
			}
			ids[s.name] = set.ID
		}
		for _, cs := range t.chains {
			prio, policy := cs.prio, nftables.ChainPolicyAccept
			ch := c.AddChain(&nftables.Chain{
				Name: cs.name, Table: tbl, Type: cs.typ, Hooknum: cs.hook, Priority: &prio, Policy: &policy,
			})
			for _, r := range cs.rules {
				for _, e := range r.exprs {
					if l, ok := e.(*expr.Lookup); ok {
						l.SetID = ids[l.SetName]
					}
				}
				c.AddRule(&nftables.Rule{
					Table: tbl, Chain: ch, Exprs: r.exprs,
					UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment()),
				})
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables tables: %w", err)
	}
	return nil
}

// tableDrift lists how the kernel's tables differ from want (empty: none).
// Rules are compared by the identity stored in their comment, sets by
// type and elements.
func tableDrift(c *nftables.Conn, want []tableSpec) ([]string, error) {
	var drift []string
	for _, t := range want {
		where := fmt.Sprintf("table %s %s", t.familyText, t.name)
		ok, err := hasTable(c, t.family, t.name)
		if err != nil {
			return nil, err
		}
		if !ok {
			drift = append(drift, where+": missing")
			continue
		}
		tbl := &nftables.Table{Family: t.family, Name: t.name}
		sets, err := c.GetSets(tbl)
		if err != nil {
			return nil, fmt.Errorf("%s: list sets: %w", where, err)
		}
		have := map[string]*nftables.Set{}
		for _, s := range sets {
			have[s.Name] = s
		}
		for _, s := range t.sets {
			got, ok := have[s.name]
			switch {
			case !ok:
				drift = append(drift, fmt.Sprintf("%s: set %s missing", where, s.name))
				continue
			case got.KeyType.Bytes != s.keyType.Bytes || got.Concatenation != s.concat:
				drift = append(drift, fmt.Sprintf("%s: set %s has type %s", where, s.name, got.KeyType.Name))
				continue
			}
			delete(have, s.name)
			elems, err := c.GetSetElements(got)
			if err != nil {
				return nil, fmt.Errorf("%s: set %s: %w", where, s.name, err)
			}
			var gotKeys, wantKeys []string
			for _, e := range elems {
				gotKeys = append(gotKeys, string(e.Key))
			}
			for _, e := range s.elems {
				wantKeys = append(wantKeys, string(e.key))
			}
			slices.Sort(gotKeys)
			slices.Sort(wantKeys)
			if !slices.Equal(gotKeys, wantKeys) {
				drift = append(drift, fmt.Sprintf("%s: set %s elements differ", where, s.name))
			}
		}
		for name := range have {
			drift = append(drift, fmt.Sprintf("%s: unexpected set %s", where, name))
		}

		chains, err := c.ListChainsOfTableFamily(t.family)
		if err != nil {
			return nil, fmt.Errorf("%s: list chains: %w", where, err)
		}
		haveChains := map[string]*nftables.Chain{}
		for _, ch := range chains {
			if ch.Table != nil && ch.Table.Name == t.name {
				haveChains[ch.Name] = ch
			}
		}
		for _, cs := range t.chains {
			got, ok := haveChains[cs.name]
			if !ok {
				drift = append(drift, fmt.Sprintf("%s: chain %s missing", where, cs.name))
				continue
			}
			delete(haveChains, cs.name)
			if got.Type != cs.typ || got.Hooknum == nil || *got.Hooknum != *cs.hook ||
				got.Priority == nil || *got.Priority != cs.prio || got.Policy == nil || *got.Policy != nftables.ChainPolicyAccept {
				drift = append(drift, fmt.Sprintf("%s: chain %s has the wrong type, hook, priority or policy", where, cs.name))
				continue
			}
			rules, err := c.GetRules(tbl, got)
			if err != nil {
				return nil, fmt.Errorf("%s: chain %s: %w", where, cs.name, err)
			}
			var gotIDs, wantIDs []string
			for _, r := range rules {
				id, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				gotIDs = append(gotIDs, id)
			}
			for _, r := range cs.rules {
				wantIDs = append(wantIDs, r.comment())
			}
			if !slices.Equal(gotIDs, wantIDs) {
				drift = append(drift, fmt.Sprintf("%s: chain %s rules differ (%d present, %d wanted)", where, cs.name, len(gotIDs), len(wantIDs)))
			}
		}
		for name := range haveChains {
			drift = append(drift, fmt.Sprintf("%s: unexpected chain %s", where, name))
		}
	}
	return drift, nil
}
