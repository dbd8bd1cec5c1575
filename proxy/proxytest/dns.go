package proxytest

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"
)

// DNS is an authoritative loopback DNS server (UDP and TCP on one port) for
// Zone. Every A question is answered with 127.0.0.1, so ACME validation of
// any name reaches the proxy on loopback. TXT and CNAME records are set by
// the test, as a libdns provider (certmagic.DNSProvider) by DNS-01, or,
// with WithUpdateKey, by TSIG-signed RFC 2136 dynamic updates.
type DNS struct {
	Addr string // "127.0.0.1:port"
	Zone string // e.g. "example.test" (no trailing dot)

	updateKey string // fqdn of the TSIG key updates must carry; "" refuses all

	mu      sync.Mutex
	txt     map[string][]string // fqdn -> values
	cname   map[string]string   // fqdn -> target fqdn
	updates int                 // accepted RFC 2136 updates
	refused int                 // refused RFC 2136 updates
}

// DNSOption configures StartDNS.
type DNSOption func(d *DNS, s *dns.Server)

// WithUpdateKey makes the server accept RFC 2136 dynamic updates of TXT
// records signed (TSIG) with the key name and base64 secret; the reply is
// signed with the same key. Without it every update is refused.
func WithUpdateKey(name, secret string) DNSOption {
	return func(d *DNS, s *dns.Server) {
		d.updateKey = fqdn(name)
		s.TsigSecret = map[string]string{d.updateKey: secret}
		s.MsgAcceptFunc = acceptUpdates
	}
}

// acceptUpdates is miekg/dns's default filter, which refuses UPDATE, with
// UPDATE let through to the handler (bounded: 64 records, one zone).
func acceptUpdates(h dns.Header) dns.MsgAcceptAction {
	if h.Bits&(1<<15) == 0 && int(h.Bits>>11)&0xF == dns.OpcodeUpdate {
		if h.Qdcount != 1 || h.Nscount > 64 || h.Arcount > 2 {
			return dns.MsgReject
		}
		return dns.MsgAccept
	}
	return dns.DefaultMsgAcceptFunc(h)
}

// StartDNS starts a server for zone; it stops when the test ends.
func StartDNS(t testing.TB, zone string, opts ...DNSOption) *DNS {
	t.Helper()
	d := &DNS{Zone: strings.TrimSuffix(zone, "."), txt: map[string][]string{}, cname: map[string]string{}}
	var (
		tcp net.Listener
		udp net.PacketConn
		err error
	)
	for range 20 { // find a port free for both protocols
		tcp, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("dns listen: %v", err)
		}
		udp, err = net.ListenPacket("udp", tcp.Addr().String())
		if err == nil {
			break
		}
		tcp.Close()
	}
	if err != nil {
		t.Fatalf("dns listen udp: %v", err)
	}
	d.Addr = tcp.Addr().String()
	h := dns.HandlerFunc(d.serve)
	ts := &dns.Server{Listener: tcp, Handler: h}
	us := &dns.Server{PacketConn: udp, Handler: h}
	for _, o := range opts {
		o(d, ts)
		o(d, us)
	}
	go func() { _ = ts.ActivateAndServe() }()
	go func() { _ = us.ActivateAndServe() }()
	t.Cleanup(func() { _ = ts.Shutdown(); _ = us.Shutdown() })
	return d
}

func fqdn(name string) string { return dns.Fqdn(strings.ToLower(name)) }

// SetTXT replaces the TXT values at name.
func (d *DNS) SetTXT(name string, values ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.txt[fqdn(name)] = values
}

// SetCNAME makes name an alias of target.
func (d *DNS) SetCNAME(name, target string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cname[fqdn(name)] = fqdn(target)
}

// Resolver returns a pure-Go resolver that asks only this server.
func (d *DNS) Resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, network, d.Addr)
	}}
}

func (d *DNS) serve(w dns.ResponseWriter, req *dns.Msg) {
	if req.Opcode == dns.OpcodeUpdate {
		d.update(w, req)
		return
	}
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	d.mu.Lock()
	for _, q := range req.Question {
		name := strings.ToLower(q.Name)
		hdr := func(t uint16) dns.RR_Header {
			return dns.RR_Header{Name: q.Name, Rrtype: t, Class: dns.ClassINET, Ttl: 1}
		}
		if target, ok := d.cname[name]; ok && q.Qtype != dns.TypeTXT {
			m.Answer = append(m.Answer, &dns.CNAME{Hdr: hdr(dns.TypeCNAME), Target: target})
			if q.Qtype == dns.TypeA { // chase the alias, like a recursive resolver
				h := hdr(dns.TypeA)
				h.Name = target
				m.Answer = append(m.Answer, &dns.A{Hdr: h, A: net.IPv4(127, 0, 0, 1)})
			}
			continue
		}
		switch q.Qtype {
		case dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: hdr(dns.TypeA), A: net.IPv4(127, 0, 0, 1)})
		case dns.TypeTXT:
			if v := d.txt[name]; len(v) > 0 {
				for _, s := range v {
					m.Answer = append(m.Answer, &dns.TXT{Hdr: hdr(dns.TypeTXT), Txt: []string{s}})
				}
			}
		case dns.TypeSOA:
			if name == fqdn(d.Zone) {
				m.Answer = append(m.Answer, &dns.SOA{Hdr: hdr(dns.TypeSOA), Ns: "ns." + name, Mbox: "hostmaster." + name,
					Serial: 1, Refresh: 60, Retry: 60, Expire: 60, Minttl: 1})
			}
		}
	}
	d.mu.Unlock()
	_ = w.WriteMsg(m)
}

// update applies an RFC 2136 UPDATE of TXT records in Zone if it carries a
// valid TSIG signature by the update key; otherwise it answers NOTAUTH and
// changes nothing.
func (d *DNS) update(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	tsig := req.IsTsig()
	signed := d.updateKey != "" && tsig != nil && strings.EqualFold(tsig.Hdr.Name, d.updateKey) && w.TsigStatus() == nil
	if signed {
		// Sign the reply; the server computes the MAC with the same key.
		m.SetTsig(tsig.Hdr.Name, tsig.Algorithm, 300, time.Now().Unix())
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	m.Rcode = d.applyUpdate(req, signed)
	if m.Rcode == dns.RcodeSuccess {
		d.updates++
	} else {
		d.refused++
	}
	_ = w.WriteMsg(m)
}

// applyUpdate checks the zone and prerequisites and applies the update
// section (RFC 2136 3.4.2): class IN adds, ANY deletes an RRset or a name,
// NONE deletes one record. It checks everything before changing anything.
func (d *DNS) applyUpdate(req *dns.Msg, signed bool) int {
	if !signed {
		return dns.RcodeNotAuth
	}
	if len(req.Question) != 1 || fqdn(req.Question[0].Name) != fqdn(d.Zone) || len(req.Answer) != 0 {
		return dns.RcodeNotZone
	}
	zone := fqdn(d.Zone)
	for _, rr := range req.Ns {
		h := rr.Header()
		name := fqdn(h.Name)
		if name != zone && !strings.HasSuffix(name, "."+zone) {
			return dns.RcodeNotZone
		}
		if h.Rrtype != dns.TypeTXT && h.Rrtype != dns.TypeANY {
			return dns.RcodeNotImplemented
		}
		switch h.Class {
		case dns.ClassINET:
			if _, ok := rr.(*dns.TXT); !ok {
				return dns.RcodeFormatError
			}
		case dns.ClassANY, dns.ClassNONE:
		default:
			return dns.RcodeFormatError
		}
	}
	for _, rr := range req.Ns {
		h := rr.Header()
		name := fqdn(h.Name)
		switch h.Class {
		case dns.ClassINET:
			v := strings.Join(rr.(*dns.TXT).Txt, "") // checked above
			if !slices.Contains(d.txt[name], v) {
				d.txt[name] = append(d.txt[name], v)
			}
		case dns.ClassANY: // delete the TXT RRset or every RRset at name
			delete(d.txt, name)
		case dns.ClassNONE:
			if t, ok := rr.(*dns.TXT); ok {
				v := strings.Join(t.Txt, "")
				d.txt[name] = slices.DeleteFunc(d.txt[name], func(s string) bool { return s == v })
			}
		}
	}
	return dns.RcodeSuccess
}

// Updates returns how many RFC 2136 updates were applied and refused.
func (d *DNS) Updates() (applied, refused int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.updates, d.refused
}

// AppendRecords implements libdns.RecordAppender (TXT records only).
func (d *DNS) AppendRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range recs {
		rr := r.RR()
		if rr.Type != "TXT" {
			return nil, fmt.Errorf("test dns: record type %s not supported", rr.Type)
		}
		name := fqdn(libdns.AbsoluteName(rr.Name, zone))
		d.txt[name] = append(d.txt[name], rr.Data)
	}
	return recs, nil
}

// DeleteRecords implements libdns.RecordDeleter.
func (d *DNS) DeleteRecords(_ context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range recs {
		rr := r.RR()
		name := fqdn(libdns.AbsoluteName(rr.Name, zone))
		var keep []string
		for _, v := range d.txt[name] {
			if rr.Data != "" && v != rr.Data {
				keep = append(keep, v)
			}
		}
		d.txt[name] = keep
	}
	return recs, nil
}

// TXT returns the TXT values currently at name (for assertions).
func (d *DNS) TXT(name string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.txt[fqdn(name)]...)
}
