package network

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names of the sets inside the Minions tables.
const (
	setHostPorts = "host_ports" // inet: TCP ports VMs may reach on the gateway
	setPorts     = "ports"      // bridge: ifname . ether_addr . ipv4_addr per TAP
)

// tableSpec is the desired state of one nftables table. The same value is
// rendered as text (Ruleset) and sent to the kernel (Manager), so the two
// cannot drift apart.
type tableSpec struct {
	family     nftables.TableFamily
	familyText string
	name       string
	sets       []setSpec
	chains     []chainSpec
}

type setSpec struct {
	name     string
	keyType  nftables.SetDatatype
	typeText string
	concat   bool
	elems    []elemSpec
}

type elemSpec struct {
	key  []byte
	text string
}

// chainSpec is a base chain with policy accept: Minions never changes the
// fate of traffic that is not its own.
type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     *nftables.ChainHook
	hookText string
	prio     nftables.ChainPriority
	prioText string
	rules    []ruleSpec
}

type ruleSpec struct {
	text  string
	exprs []expr.Any
}

// comment is the identity of the rule stored in its userdata: a hash of
// its text. Check compares these to find missing, extra or changed rules.
func (r ruleSpec) comment() string {
	sum := sha256.Sum256([]byte(r.text))
	return fmt.Sprintf("minions %x", sum[:6])
}

// Ruleset renders the nftables state that cfg and ports call for, in nft
// syntax. It is what Setup and AddPort install (counters aside); it is pure
// and used for golden tests and `minions doctor` output. cfg must be valid.
func Ruleset(cfg Config, ports []Port) string {
	cfg = cfg.withDefaults()
	var b strings.Builder
	for _, t := range desiredTables(cfg, ports) {
		t.render(&b)
	}
	return b.String()
}

func desiredTables(cfg Config, ports []Port) []tableSpec {
	return []tableSpec{inetTable(cfg), bridgeTable(cfg, ports)}
}

func inetTable(cfg Config) tableSpec {
	br := cfg.Bridge
	gw := netip.PrefixFrom(cfg.Gateway(), 32)
	hp := setSpec{name: setHostPorts, keyType: nftables.TypeInetService, typeText: "inet_service"}
	for _, p := range cfg.HostPorts {
		hp.elems = append(hp.elems, elemSpec{key: binaryutil.BigEndian.PutUint16(p), text: fmt.Sprint(p)})
	}
	t := tableSpec{
		family: nftables.TableFamilyINet, familyText: "inet", name: cfg.Table,
		sets: []setSpec{hp},
		chains: []chainSpec{
			{
				name: "input", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookInput, hookText: "input",
				prio: *nftables.ChainPriorityFilter, prioText: "filter",
				rules: []ruleSpec{
					// A TAP outside the bridge (the bridge was recreated,
					// say) reaches nothing: through the bridge, packets
					// carry the bridge's name here.
					rule(ifnamePrefix("iifname", TAPPrefix, true), counter(), drop()),
					rule(ifname("iifname", br, true), ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, "established,related"), accept()),
					rule(ifname("iifname", br, true), ipAddr("daddr", gw), l4proto(unix.IPPROTO_ICMP), icmpType(8, "echo-request"), accept()),
					rule(ifname("iifname", br, true), ipAddr("daddr", gw), l4proto(unix.IPPROTO_TCP), tcpDportIn(setHostPorts), accept()),
				},
			},
			{
				name: "forward", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookForward, hookText: "forward",
				prio: *nftables.ChainPriorityFilter, prioText: "filter",
				rules: []ruleSpec{
					rule(ifnamePrefix("iifname", TAPPrefix, true), counter(), drop()),
					// VM to VM, routed through the host or bridged and seen
					// here because bridged frames pass the inet hooks.
					rule(ifname("iifname", br, true), ifname("oifname", br, true), counter(), drop()),
				},
			},
		},
	}
	// From the bridge the host itself accepts only the above and the
	// nameserver; everything else, on any of its addresses, is dropped.
	input, forward := &t.chains[0], &t.chains[1]
	input.rules = append(input.rules, dnsRules(cfg)...)
	input.rules = append(input.rules, rule(ifname("iifname", br, true), counter(), drop()))
	// Forwarded: the nameserver and the allow-list, then DeniedEgress is
	// refused, then the rest (the public internet) is accepted.
	forward.rules = append(forward.rules, dnsRules(cfg)...)
	for _, a := range cfg.EgressAllow {
		forward.rules = append(forward.rules, rule(ifname("iifname", br, true), ipAddr("saddr", cfg.Subnet), ipAddr("daddr", a.Prefix), l4Match(a.Proto, a.Port), accept()))
	}
	for _, p := range DeniedEgress {
		forward.rules = append(forward.rules, rule(ifname("iifname", br, true), ipAddr("daddr", p), counter(), reject()))
	}
	forward.rules = append(forward.rules,
		rule(ifname("iifname", br, true), ipAddr("saddr", cfg.Subnet), accept()),
		rule(ifname("iifname", br, true), counter(), drop()),
		rule(ifname("oifname", br, true), ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, "established,related"), accept()),
		rule(ifname("oifname", br, true), counter(), drop()),
	)
	if cfg.UplinkNAT {
		t.chains = append(t.chains, chainSpec{
			name: "postrouting", typ: nftables.ChainTypeNAT, hook: nftables.ChainHookPostrouting, hookText: "postrouting",
			prio: *nftables.ChainPriorityNATSource, prioText: "srcnat",
			rules: []ruleSpec{
				rule(ifname("oifname", br, false), ipAddr("saddr", cfg.Subnet), masquerade()),
			},
		})
	}
	return t
}

// dnsRules let VMs reach cfg.DNS on port 53, UDP and TCP (none without a
// nameserver).
func dnsRules(cfg Config) []ruleSpec {
	if !cfg.DNS.IsValid() {
		return nil
	}
	br, dns := cfg.Bridge, netip.PrefixFrom(cfg.DNS, 32)
	return []ruleSpec{
		rule(ifname("iifname", br, true), ipAddr("saddr", cfg.Subnet), ipAddr("daddr", dns), l4Match("udp", 53), accept()),
		rule(ifname("iifname", br, true), ipAddr("saddr", cfg.Subnet), ipAddr("daddr", dns), l4Match("tcp", 53), accept()),
	}
}

// Bridge family priority "filter" is -200.
const bridgeFilterPriority nftables.ChainPriority = -200

func bridgeTable(cfg Config, ports []Port) tableSpec {
	ps := setSpec{
		name:     setPorts,
		keyType:  nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeEtherAddr, nftables.TypeIPAddr),
		typeText: "ifname . ether_addr . ipv4_addr",
		concat:   true,
	}
	sorted := slices.Clone(ports)
	slices.SortFunc(sorted, func(a, b Port) int { return strings.Compare(a.TAP, b.TAP) })
	for _, p := range sorted {
		ps.elems = append(ps.elems, portElem(p))
	}
	return tableSpec{
		family: nftables.TableFamilyBridge, familyText: "bridge", name: cfg.Table,
		sets: []setSpec{ps},
		chains: []chainSpec{
			{
				name: "prerouting", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookPrerouting, hookText: "prerouting",
				prio: bridgeFilterPriority, prioText: "filter",
				rules: []ruleSpec{
					rule(ifnamePrefix("iifname", TAPPrefix, false), accept()),
					rule(etherType(unix.ETH_P_IP, "ip"),
						portLookup("iifname . ether saddr . ip saddr", payload(expr.PayloadBaseLLHeader, 6, 6), payload(expr.PayloadBaseNetworkHeader, 12, 4)),
						accept()),
					rule(etherType(unix.ETH_P_ARP, "arp"), arpEthernetIPv4(),
						portLookup("iifname . ether saddr . arp saddr ip", payload(expr.PayloadBaseLLHeader, 6, 6), payload(expr.PayloadBaseNetworkHeader, 14, 4)),
						portLookup("iifname . arp saddr ether . arp saddr ip", payload(expr.PayloadBaseNetworkHeader, 8, 6), payload(expr.PayloadBaseNetworkHeader, 14, 4)),
						accept()),
					rule(ifGroup(PortGroup(cfg.Table)), ifnamePrefix("iifname", TAPPrefix, true), counter(), drop()),
				},
			},
			{
				name: "forward", typ: nftables.ChainTypeFilter, hook: nftables.ChainHookForward, hookText: "forward",
				prio: bridgeFilterPriority, prioText: "filter",
				rules: []ruleSpec{
					rule(ifGroup(PortGroup(cfg.Table)), ifnamePrefix("iifname", TAPPrefix, true), counter(), drop()),
				},
			},
		},
	}
}

// portElem is the key of p in the ports set: ifname (16 bytes), MAC (6
// bytes padded to 8), IPv4 (4 bytes).
func portElem(p Port) elemSpec {
	key := make([]byte, 28)
	copy(key[0:16], p.TAP)
	copy(key[16:22], p.MAC)
	a := p.IP.As4()
	copy(key[24:28], a[:])
	return elemSpec{key: key, text: fmt.Sprintf("%q . %s . %s", p.TAP, p.MAC, p.IP)}
}

// decodePortElem is the inverse of portElem.
func decodePortElem(key []byte) (Port, bool) {
	if len(key) != 28 {
		return Port{}, false
	}
	name := string(bytes.TrimRight(key[0:16], "\x00"))
	return Port{
		TAP: name,
		MAC: net.HardwareAddr(slices.Clone(key[16:22])),
		IP:  netip.AddrFrom4([4]byte(key[24:28])),
	}, true
}

func (t tableSpec) render(b *strings.Builder) {
	fmt.Fprintf(b, "table %s %s {\n", t.familyText, t.name)
	first := true
	for _, s := range t.sets {
		if !first {
			b.WriteString("\n")
		}
		first = false
		fmt.Fprintf(b, "\tset %s {\n\t\ttype %s\n", s.name, s.typeText)
		if len(s.elems) > 0 {
			texts := make([]string, len(s.elems))
			for i, e := range s.elems {
				texts[i] = e.text
			}
			sep := ", "
			if s.concat {
				sep = ",\n\t\t\t     "
			}
			fmt.Fprintf(b, "\t\telements = { %s }\n", strings.Join(texts, sep))
		}
		b.WriteString("\t}\n")
	}
	for _, c := range t.chains {
		if !first {
			b.WriteString("\n")
		}
		first = false
		fmt.Fprintf(b, "\tchain %s {\n\t\ttype %s hook %s priority %s; policy accept;\n", c.name, c.typ, c.hookText, c.prioText)
		for _, r := range c.rules {
			fmt.Fprintf(b, "\t\t%s\n", r.text)
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
}

// match is one piece of a rule: its nft text and expressions. Implicit
// dependencies (meta nfproto, meta l4proto) have empty text, as in nft.
type match struct {
	text  string
	exprs []expr.Any
}

func rule(ms ...match) ruleSpec {
	var r ruleSpec
	var words []string
	for _, m := range ms {
		if m.text != "" {
			words = append(words, m.text)
		}
		r.exprs = append(r.exprs, m.exprs...)
	}
	r.text = strings.Join(words, " ")
	return r
}

func ifnameBytes(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func cmpOp(eq bool) (expr.CmpOp, string) {
	if eq {
		return expr.CmpOpEq, ""
	}
	return expr.CmpOpNeq, "!= "
}

// ifname matches iifname or oifname.
func ifname(word, name string, eq bool) match {
	key := expr.MetaKeyIIFNAME
	if word == "oifname" {
		key = expr.MetaKeyOIFNAME
	}
	op, neg := cmpOp(eq)
	return match{
		text: fmt.Sprintf("%s %s%q", word, neg, name),
		exprs: []expr.Any{
			&expr.Meta{Key: key, Register: 1},
			&expr.Cmp{Op: op, Register: 1, Data: ifnameBytes(name)},
		},
	}
}

// ifnamePrefix matches interface names starting with prefix ("mn*").
// (meta ibrname would scope the bridge rules to one bridge, but needs
// CONFIG_NFT_BRIDGE_META, which not every kernel has.)
func ifnamePrefix(word, prefix string, eq bool) match {
	m := ifname(word, prefix, eq)
	m.text = fmt.Sprintf("%s %s%q", word, map[bool]string{true: "", false: "!= "}[eq], prefix+"*")
	m.exprs[1].(*expr.Cmp).Data = []byte(prefix)
	return m
}

// PortGroup is the interface group (IFLA_GROUP) of this table's TAPs: a
// bridge-family table sees the frames of every bridge in the network
// namespace, so its drop rules match only TAPs of its own group and leave
// another installation's VMs (a second bridge, a test's engine) alone.
// (meta ibrname would say "this bridge" directly, but needs
// CONFIG_NFT_BRIDGE_META, which not every kernel has; iifgroup is core.)
// Derived from the table name: never 0 (the default group).
func PortGroup(table string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(table))
	return h.Sum32()&0x7fff0000 | 0x4d4e // "MN"; the high bits from the name
}

// ifGroup matches the input interface's group.
func ifGroup(g uint32) match {
	return match{
		text: fmt.Sprintf("iifgroup %d", g),
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFGROUP, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(g)},
		},
	}
}

func ctState(bits uint32, text string) match {
	return match{
		text: "ct state " + text,
		exprs: []expr.Any{
			&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		},
	}
}

// ipAddr matches ip saddr or daddr against a prefix (inet family; adds the
// meta nfproto ipv4 dependency).
func ipAddr(field string, p netip.Prefix) match {
	off := uint32(12)
	if field == "daddr" {
		off = 16
	}
	m := match{
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
			payload(expr.PayloadBaseNetworkHeader, off, 4),
		},
	}
	addr := p.Masked().Addr().As4()
	if p.Bits() == 32 {
		m.text = fmt.Sprintf("ip %s %s", field, p.Addr())
	} else {
		mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
		m.text = fmt.Sprintf("ip %s %s", field, p.Masked())
		m.exprs = append(m.exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)})
	}
	m.exprs = append(m.exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]})
	return m
}

func l4proto(proto byte) match {
	return match{exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}}
}

// l4Match matches a protocol ("tcp" or "udp"; "" matches anything) and,
// when port is not 0, its destination port.
func l4Match(proto string, port uint16) match {
	var num byte
	switch proto {
	case "":
		return match{}
	case "tcp":
		num = unix.IPPROTO_TCP
	case "udp":
		num = unix.IPPROTO_UDP
	default:
		panic("network: l4Match: protocol " + proto)
	}
	m := l4proto(num)
	if port == 0 {
		m.text = "meta l4proto " + proto
		return m
	}
	m.text = fmt.Sprintf("%s dport %d", proto, port)
	m.exprs = append(m.exprs,
		payload(expr.PayloadBaseTransportHeader, 2, 2),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	)
	return m
}

func icmpType(typ byte, text string) match {
	return match{
		text: "icmp type " + text,
		exprs: []expr.Any{
			payload(expr.PayloadBaseTransportHeader, 0, 1),
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{typ}},
		},
	}
}

func tcpDportIn(set string) match {
	return match{
		text: "tcp dport @" + set,
		exprs: []expr.Any{
			payload(expr.PayloadBaseTransportHeader, 2, 2),
			&expr.Lookup{SourceRegister: 1, SetName: set},
		},
	}
}

func etherType(t uint16, text string) match {
	return match{
		text: "ether type " + text,
		exprs: []expr.Any{
			payload(expr.PayloadBaseLLHeader, 12, 2),
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t)},
		},
	}
}

// arpEthernetIPv4 checks the ARP header describes Ethernet and IPv4, so
// the address fields are where portLookup reads them.
func arpEthernetIPv4() match {
	return match{
		text: "arp htype 1 arp ptype ip arp hlen 6 arp plen 4",
		exprs: []expr.Any{
			payload(expr.PayloadBaseNetworkHeader, 0, 6),
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 1, 8, 0, 6, 4}},
		},
	}
}

func payload(base expr.PayloadBase, off, n uint32) *expr.Payload {
	return &expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: n}
}

// 32-bit registers for concatenations (NFT_REG32_00 is 8).
const (
	reg32IfName = 8  // 16 bytes: registers 8-11
	reg32MAC    = 12 // 6 bytes: registers 12-13
	reg32IP     = 14 // 4 bytes
)

// portLookup matches iifname . <mac> . <ip> against the ports set.
func portLookup(text string, mac, ip *expr.Payload) match {
	mac.DestRegister = reg32MAC
	ip.DestRegister = reg32IP
	return match{
		text: text + " @" + setPorts,
		exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg32IfName},
			mac,
			ip,
			&expr.Lookup{SourceRegister: reg32IfName, SetName: setPorts},
		},
	}
}

func counter() match { return match{text: "counter", exprs: []expr.Any{&expr.Counter{}}} }

func accept() match {
	return match{text: "accept", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}}}
}

func drop() match {
	return match{text: "drop", exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}}
}

// reject answers with ICMP "administratively prohibited", so a refused
// connection fails at once instead of timing out.
func reject() match {
	return match{text: "reject with icmpx admin-prohibited", exprs: []expr.Any{
		&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED},
	}}
}

func masquerade() match { return match{text: "masquerade", exprs: []expr.Any{&expr.Masq{}}} }
