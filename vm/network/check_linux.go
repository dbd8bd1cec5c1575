package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/vishvananda/netlink"
)

// Finding is one checked fact.
type Finding struct {
	What   string // "bridge minions0", "port mn0123456789ab", ...
	OK     bool
	Detail string // what is wrong, or a short confirmation
}

// Report is the result of Check.
type Report struct {
	Findings []Finding
}

// OK reports whether every finding is OK.
func (r Report) OK() bool { return len(r.Problems()) == 0 }

// Problems returns the findings that are not OK.
func (r Report) Problems() []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if !f.OK {
			out = append(out, f)
		}
	}
	return out
}

// String renders one line per finding: "ok    what: detail" or
// "FAIL  what: detail".
func (r Report) String() string {
	var b strings.Builder
	for _, f := range r.Findings {
		mark := "ok  "
		if !f.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(&b, "%s  %s: %s\n", mark, f.What, f.Detail)
	}
	return b.String()
}

// Check inspects the host without changing it and reports what is present
// and what is missing or different: the bridge (present, up, address), IPv4
// forwarding, every table, set, chain and rule, and for each registered
// port its interface (present, in the bridge, isolated, up), plus
// interfaces in the bridge that are not registered. The error is for
// failures to inspect, not for problems found.
func (m *Manager) Check(ctx context.Context) (Report, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var r Report
	add := func(what string, ok bool, detail string) {
		r.Findings = append(r.Findings, Finding{What: what, OK: ok, Detail: detail})
	}
	if err := ctx.Err(); err != nil {
		return r, fmt.Errorf("network check: %w", err)
	}

	brWhat := "bridge " + m.cfg.Bridge
	br, err := netlink.LinkByName(m.cfg.Bridge)
	switch {
	case errors.As(err, new(netlink.LinkNotFoundError)):
		add(brWhat, false, "missing")
		br = nil
	case err != nil:
		return r, fmt.Errorf("network check: %w", err)
	case br.Type() != "bridge":
		add(brWhat, false, "is a "+br.Type())
		br = nil
	default:
		var problems []string
		if br.Attrs().Flags&net.FlagUp == 0 {
			problems = append(problems, "down")
		}
		addrs, err := netlink.AddrList(br, netlink.FAMILY_V4)
		if err != nil {
			return r, fmt.Errorf("network check: %w", err)
		}
		want, found := m.gatewayNet().String(), false
		for _, a := range addrs {
			if a.IPNet.String() == want {
				found = true
			} else {
				problems = append(problems, "extra address "+a.IPNet.String())
			}
		}
		if !found {
			problems = append(problems, "address "+want+" missing")
		}
		if len(problems) == 0 {
			add(brWhat, true, "up with "+want)
		} else {
			add(brWhat, false, strings.Join(problems, ", "))
		}
	}
	if forwardingOn() {
		add("ipv4 forwarding", true, "on")
	} else {
		add("ipv4 forwarding", false, "off")
	}

	c, err := nftables.New()
	if err != nil {
		return r, fmt.Errorf("network check: nftables: %w", err)
	}
	ports, err := m.readPorts(c)
	if err != nil && !errors.Is(err, errs.FailedPrecondition) {
		return r, fmt.Errorf("network check: %w", err)
	}
	known, err := m.knownPorts(c)
	if err != nil {
		return r, fmt.Errorf("network check: %w", err)
	}
	drift, err := tableDrift(c, desiredTables(m.cfg, known))
	if err != nil {
		return r, fmt.Errorf("network check: %w", err)
	}
	if len(drift) == 0 {
		add("nftables table "+m.cfg.Table, true, "inet and bridge tables as configured")
	}
	for _, d := range drift {
		add("nftables table "+m.cfg.Table, false, d)
	}

	registered := map[string]bool{}
	for _, p := range ports {
		registered[p.TAP] = true
		what := "port " + p.TAP
		link, err := netlink.LinkByName(p.TAP)
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			add(what, false, "registered ("+p.IP.String()+") but interface missing")
			continue
		} else if err != nil {
			return r, fmt.Errorf("network check: %w", err)
		}
		var problems []string
		if br == nil || link.Attrs().MasterIndex != br.Attrs().Index {
			problems = append(problems, "not in bridge "+m.cfg.Bridge)
		}
		if pi, err := netlink.LinkGetProtinfo(link); err != nil || !pi.Isolated {
			problems = append(problems, "not isolated")
		}
		if link.Attrs().Flags&net.FlagUp == 0 {
			problems = append(problems, "down")
		}
		if len(problems) == 0 {
			add(what, true, p.IP.String()+" "+p.MAC.String())
		} else {
			add(what, false, strings.Join(problems, ", "))
		}
	}
	if br != nil {
		links, err := netlink.LinkList()
		if err != nil {
			return r, fmt.Errorf("network check: %w", err)
		}
		for _, l := range links {
			if l.Attrs().MasterIndex == br.Attrs().Index && !registered[l.Attrs().Name] {
				add("port "+l.Attrs().Name, false, "in bridge "+m.cfg.Bridge+" but not registered")
			}
		}
	}
	return r, nil
}
