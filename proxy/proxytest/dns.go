package proxytest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/libdns/libdns"
	"github.com/miekg/dns"
)

// DNS is an authoritative loopback DNS server (UDP and TCP on one port) for
// Zone. Every A question is answered with 127.0.0.1, so ACME validation of
// any name reaches the proxy on loopback. TXT and CNAME records are set by
// the test or, as a libdns provider (certmagic.DNSProvider), by DNS-01.
type DNS struct {
	Addr string // "127.0.0.1:port"
	Zone string // e.g. "example.test" (no trailing dot)

	mu    sync.Mutex
	txt   map[string][]string // fqdn -> values
	cname map[string]string   // fqdn -> target fqdn
}

// StartDNS starts a server for zone; it stops when the test ends.
func StartDNS(t testing.TB, zone string) *DNS {
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
