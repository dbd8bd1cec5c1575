package nodeagent

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// Direct streams: an agent stream or the node's port tunnel as one TLS
// connection from the control plane straight to the node, brokered over
// the fabric.
//
//  1. The control plane calls direct_ticket on the node (a fabric call,
//     so it reaches only that node and the answer comes only from it).
//     The node answers with a one-time ticket (random, single use, valid
//     DirectConfig.TicketTTL, bound to the kind and the VM), the address
//     of its direct listener and the fingerprint of its certificate.
//  2. The control plane dials that address over TLS with its client
//     certificate (fabric.ControlCertificate, signed by the fabric CA)
//     and pins the node's certificate to the fingerprint.
//  3. It sends one hello line ({"ticket","kind","vm"} JSON); the node
//     redeems the ticket (whatever the outcome, it is spent) and answers
//     one line ({"ok":true} or {"error":{code,message}}).
//  4. Then the connection is the agent channel of the VM (kind "agent"),
//     or an SSH connection whose direct-tcpip channels reach ports of the
//     node's own running VMs (kind "tunnel", tunnel.go).
//
// The node requires a client certificate the fabric CA signed for client
// auth: only the control plane holds the CA's key.

// Ticket kinds.
const (
	kindAgent  = "agent"
	kindTunnel = "tunnel"
	kindDisk   = "disk" // a disk stream (transfer_direct.go); VM is the stream's ID
	// kindPeerDisk is a disk stream another node dials (transfer_peer.go):
	// its ticket names the certificate that node must present.
	kindPeerDisk = "peerdisk"
)

// DirectConfig configures a node's direct listener.
type DirectConfig struct {
	ID string // the node's host ID (required)
	// Listen is host:port to listen on: the address this host reaches
	// the fabric from (DirectAddress finds it); port 0 picks a free one.
	Listen string
	// Advertise is host:port the control plane dials (default: the
	// bound address, whose host must then be specific).
	Advertise string
	// CA is the fabric CA's certificate (PEM): only client certificates
	// it signed are accepted (required).
	CA []byte
	// TicketTTL is how long a ticket may wait to be redeemed (default 10 s).
	TicketTTL time.Duration
	Log       *slog.Logger
}

// Validate checks the configuration.
func (c *DirectConfig) Validate() error {
	if !fabric.ValidID(c.ID) || c.Listen == "" || len(c.CA) == 0 {
		return errs.New(errs.InvalidArgument, "direct listener: a node id, a listen address and the fabric CA are required")
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return errs.New(errs.InvalidArgument, "direct listener %q: want host:port", c.Listen)
	}
	if c.TicketTTL < 0 {
		return errs.New(errs.InvalidArgument, "direct listener: negative ticket lifetime")
	}
	return nil
}

// Direct is a node's direct listener. ServeEngine (ServeConfig.Direct)
// issues its tickets and serves it; Close stops it. Safe for concurrent
// use.
type Direct struct {
	cfg    DirectConfig
	log    *slog.Logger
	ln     net.Listener
	tls    *tls.Config
	pool   *x509.CertPool // the fabric CA: the control plane's certificate
	fp     string
	addr   string
	sshCfg *ssh.ServerConfig
	now    func() time.Time

	mu      sync.Mutex
	tickets map[string]ticket
	conns   map[net.Conn]bool
	disks   map[string]*parkedDisk // transfer_direct.go
	closed  bool
}

type ticket struct {
	kind, vm string
	// peer is the hex SHA-256 of the certificate the connection must
	// present (a kindPeerDisk ticket); "" is the control plane's.
	peer    string
	expires time.Time
}

// ticketReply answers direct_ticket.
type ticketReply struct {
	Addr   string `json:"addr"`   // host:port of the node's direct listener
	Ticket string `json:"ticket"` // one-time
	Cert   string `json:"cert"`   // hex SHA-256 of the node's certificate
}

// hello is the control plane's first line on a direct connection.
type hello struct {
	Ticket string `json:"ticket"`
	Kind   string `json:"kind"`
	VM     string `json:"vm,omitempty"`
}

type helloReply struct {
	OK    bool       `json:"ok,omitempty"`
	Error *wireError `json:"error,omitempty"`
}

// NewDirect listens on cfg.Listen with a fresh node certificate.
func NewDirect(cfg DirectConfig) (*Direct, error) {
	if cfg.TicketTTL == 0 {
		cfg.TicketTTL = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pool, err := fabric.ClientCAs(cfg.CA)
	if err != nil {
		return nil, err
	}
	cert, fp, err := fabric.NodeCertificate(cfg.ID)
	if err != nil {
		return nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	hostKey, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	// TLS has authenticated both ends: the tunnel's SSH needs no auth.
	sshCfg := &ssh.ServerConfig{NoClientAuth: true}
	sshCfg.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, errs.New(errs.Unavailable, "direct listener: %v", err)
	}
	addr := cfg.Advertise
	if addr == "" {
		addr = ln.Addr().String()
		if ap := ln.Addr().(*net.TCPAddr); ap.IP.IsUnspecified() {
			ln.Close()
			return nil, errs.New(errs.InvalidArgument, "direct listener on %s: give an address the control plane can dial (Advertise)", cfg.Listen)
		}
	}
	d := &Direct{cfg: cfg, log: cfg.Log.With("component", "nodeagent", "host_id", cfg.ID), ln: ln, fp: fp, addr: addr, sshCfg: sshCfg, now: time.Now,
		tickets: map[string]ticket{}, conns: map[net.Conn]bool{},
		pool: pool,
		// The control plane's client certificate (the fabric CA's), or
		// another node's self-signed one while a peer disk ticket names
		// its fingerprint (transfer_peer.go; redeem checks the ticket's).
		tls: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
			ClientAuth: tls.RequireAnyClientCert}}
	d.tls.VerifyConnection = func(cs tls.ConnectionState) error {
		if p := d.peerOf(cs); p != "" && !d.expects(p) {
			return errs.New(errs.PermissionDenied, "direct listener: not the control plane's certificate, nor one a ticket names")
		}
		return nil
	}
	return d, nil
}

// Addr is the address the control plane dials (Advertise or the bound one).
func (d *Direct) Addr() string { return d.addr }

// Close stops listening and closes the direct connections. Idempotent.
func (d *Direct) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	for c := range d.conns {
		c.Close()
	}
	d.mu.Unlock()
	return d.ln.Close()
}

// issue makes a ticket for kind (and vm) that the control plane redeems;
// expired ones are dropped.
func (d *Direct) issue(kind, vm string) (ticketReply, error) { return d.issueFor(kind, vm, "") }

// issueFor makes a ticket that only a connection presenting the
// certificate of fingerprint peer redeems ("" the control plane's).
func (d *Direct) issueFor(kind, vm, peer string) (ticketReply, error) {
	var b [16]byte
	rand.Read(b[:])
	tok := hex.EncodeToString(b[:])
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ticketReply{}, errs.New(errs.Unavailable, "direct listener closed")
	}
	for k, t := range d.tickets {
		if now.After(t.expires) {
			delete(d.tickets, k)
		}
	}
	if len(d.tickets) >= 4096 {
		return ticketReply{}, errs.New(errs.Unavailable, "too many direct tickets outstanding")
	}
	d.tickets[tok] = ticket{kind: kind, vm: vm, peer: peer, expires: now.Add(d.cfg.TicketTTL)}
	return ticketReply{Addr: d.addr, Ticket: tok, Cert: d.fp}, nil
}

// redeem spends ticket tok for kind and vm, presented by peer (the
// client certificate's fingerprint, "" for the control plane's):
// errs.PermissionDenied when it is unknown, spent, expired, for something
// else or for someone else (then it is spent too).
func (d *Direct) redeem(tok, kind, vm, peer string) error {
	d.mu.Lock()
	t, ok := d.tickets[tok]
	delete(d.tickets, tok)
	d.mu.Unlock()
	switch {
	case !ok:
		return errs.New(errs.PermissionDenied, "direct ticket unknown or already used")
	case d.now().After(t.expires):
		return errs.New(errs.PermissionDenied, "direct ticket expired")
	case t.kind != kind || t.vm != vm:
		return errs.New(errs.PermissionDenied, "direct ticket is for another %s", map[bool]string{true: "vm", false: "use"}[t.kind == kind])
	case t.peer != peer:
		return errs.New(errs.PermissionDenied, "direct ticket is for another peer")
	}
	return nil
}

// expects reports whether an unexpired ticket names peer.
func (d *Direct) expects(peer string) bool {
	now := d.now()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, t := range d.tickets {
		if t.peer == peer && !now.After(t.expires) {
			return true
		}
	}
	return false
}

// peerOf is who presented cs's client certificate: "" for the control
// plane (a certificate the fabric CA signed for it), else the
// certificate's fingerprint (another node).
func (d *Direct) peerOf(cs tls.ConnectionState) string {
	if len(cs.PeerCertificates) == 0 {
		return "none"
	}
	leaf := cs.PeerCertificates[0]
	opts := x509.VerifyOptions{Roots: d.pool, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err == nil && leaf.Subject.CommonName == fabric.ControlCommonName {
		return ""
	}
	return fabric.CertFingerprint(leaf.Raw)
}

// serve accepts direct connections for eng until ctx ends (then it
// closes d).
func (d *Direct) serve(ctx context.Context, eng engine.Engine) {
	go func() { <-ctx.Done(); d.Close() }()
	for {
		c, err := d.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			d.log.Warn("direct accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if !d.track(c, true) {
			c.Close()
			return
		}
		go func() {
			defer func() { d.track(c, false); c.Close() }()
			if err := d.handle(ctx, c, eng); err != nil {
				d.log.Debug("direct connection", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

func (d *Direct) track(c net.Conn, add bool) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if add {
		if d.closed {
			return false
		}
		d.conns[c] = true
	} else {
		delete(d.conns, c)
	}
	return true
}

// handle authenticates one connection, redeems its ticket and serves it.
func (d *Direct) handle(ctx context.Context, raw net.Conn, eng engine.Engine) error {
	raw.SetDeadline(time.Now().Add(10 * time.Second))
	sc := &stallConn{Conn: raw} // transfer_direct.go: armed for disk streams
	ra := &readAhead{Conn: sc}  // transfer_direct.go
	c := tls.Server(ra, d.tls)
	if err := c.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	line, err := readLine(c, 4096)
	if err != nil {
		return fmt.Errorf("hello: %w", err)
	}
	var h hello
	if err := json.Unmarshal(line, &h); err != nil {
		return writeHello(c, errs.New(errs.InvalidArgument, "bad hello"))
	}
	if err := d.redeem(h.Ticket, h.Kind, h.VM, d.peerOf(c.ConnectionState())); err != nil {
		return writeHello(c, err)
	}
	switch h.Kind {
	case kindAgent:
		ac, err := eng.DialAgent(ctx, h.VM)
		if err != nil {
			return writeHello(c, err)
		}
		defer ac.Close()
		if err := writeHello(c, nil); err != nil {
			return err
		}
		raw.SetDeadline(time.Time{})
		splice(c, ac)
		return nil
	case kindTunnel:
		if err := writeHello(c, nil); err != nil {
			return err
		}
		raw.SetDeadline(time.Time{})
		return d.serveTunnel(ctx, c, eng)
	case kindDisk, kindPeerDisk:
		if err := writeHello(c, nil); err != nil {
			return err
		}
		raw.SetDeadline(time.Time{})
		sc.arm(diskStall)
		ra.buffer(readAheadSize)
		return d.parkDisk(ctx, h.VM, c) // transfer_direct.go
	}
	return writeHello(c, errs.New(errs.InvalidArgument, "unknown direct kind %q", h.Kind))
}

// writeHello answers the hello: ok when err is nil. It returns err (or
// the write's error).
func writeHello(c net.Conn, err error) error {
	b, _ := json.Marshal(helloReply{OK: err == nil, Error: toWire(err)})
	if _, werr := c.Write(append(b, '\n')); werr != nil {
		return werr
	}
	return err
}

// readLine reads up to a newline a byte at a time (what follows belongs
// to the spliced stream), at most max bytes.
func readLine(r io.Reader, max int) ([]byte, error) {
	var line []byte
	b := make([]byte, 1)
	for len(line) < max {
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		if b[0] == '\n' {
			return line, nil
		}
		line = append(line, b[0])
	}
	return nil, errs.New(errs.InvalidArgument, "line longer than %d bytes", max)
}

// splice copies both ways until either side ends, then closes both.
func splice(a, b io.ReadWriteCloser) {
	done := make(chan struct{}, 2)
	go func() { io.Copy(a, b); done <- struct{}{} }()
	go func() { io.Copy(b, a); done <- struct{}{} }()
	<-done
	a.Close()
	b.Close()
	<-done
}

// DirectAddress is the local address this host reaches the first of
// natsURLs from (no packet is sent): where a node's direct listener
// belongs, so the control plane can dial it back.
func DirectAddress(natsURLs []string) (string, error) {
	if len(natsURLs) == 0 {
		return "", errs.New(errs.InvalidArgument, "no fabric address")
	}
	u := natsURLs[0]
	if i := strings.Index(u, "://"); i >= 0 {
		u = u[i+3:]
	}
	if i := strings.LastIndexByte(u, '@'); i >= 0 {
		u = u[i+1:]
	}
	u, _, _ = strings.Cut(u, "/")
	c, err := net.Dial("udp", u)
	if err != nil {
		return "", errs.New(errs.Unavailable, "route to the fabric %s: %v", u, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// errNoDirect marks a direct path that is not there (no listener, old
// node, unreachable, pin mismatch): the caller falls back to NATS.
type errNoDirect struct{ err error }

func (e *errNoDirect) Error() string { return "no direct path: " + e.err.Error() }
func (e *errNoDirect) Unwrap() error { return e.err }

// dialDirect opens a direct connection of kind (for vm) to the node: a
// ticket over the fabric, TLS pinned to the node's certificate, the
// hello. An error of type *errNoDirect means the direct path is not
// there; any other is the node's answer (the VM does not run, say).
func (r *Remote) dialDirect(ctx context.Context, kind, vm string) (net.Conn, error) {
	if r.cfg.DirectTLS == nil {
		return nil, &errNoDirect{errors.New("no client certificate configured")}
	}
	var t ticketReply
	if err := r.call(ctx, mDirectTicket, callRequest{ID: vm, Kind: kind}, nil, &t); err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, &errNoDirect{err}
	}
	cfg := r.cfg.DirectTLS.Clone()
	cfg.MinVersion = tls.VersionTLS13
	// The node's certificate is self-signed: pinned to the fingerprint
	// that came over the node's own fabric subjects instead.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 || fabric.CertFingerprint(cs.PeerCertificates[0].Raw) != t.Cert {
			return errs.New(errs.PermissionDenied, "node %s presented a certificate other than the one it announced", r.cfg.ID)
		}
		return nil
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{Config: cfg}).DialContext(dctx, "tcp", t.Addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &errNoDirect{err}
	}
	dl := time.Now().Add(10 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	c.SetDeadline(dl)
	b, _ := json.Marshal(hello{Ticket: t.Ticket, Kind: kind, VM: vm})
	if _, err := c.Write(append(b, '\n')); err != nil {
		c.Close()
		return nil, &errNoDirect{err}
	}
	line, err := readLine(c, 4096)
	if err != nil {
		c.Close()
		return nil, &errNoDirect{err}
	}
	var rep helloReply
	if err := json.Unmarshal(line, &rep); err != nil || !rep.OK {
		c.Close()
		if rep.Error != nil {
			return nil, fromWire(rep.Error)
		}
		return nil, &errNoDirect{fmt.Errorf("bad hello reply %q", line)}
	}
	c.SetDeadline(time.Time{})
	return c, nil
}
