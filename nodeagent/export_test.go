package nodeagent

import (
	"crypto/tls"
	"time"
)

// Kinds of direct tickets, for tests.
const (
	KindAgent    = kindAgent
	KindTunnel   = kindTunnel
	KindDisk     = kindDisk
	KindPeerDisk = kindPeerDisk
)

// IssueFor makes a ticket as direct_ticket does for a peer's certificate
// of fingerprint peer.
func (d *Direct) IssueFor(kind, vm, peer string) (addr, ticket, cert string, err error) {
	t, err := d.issueFor(kind, vm, peer)
	return t.Addr, t.Ticket, t.Cert, err
}

// ClientCert is the certificate d presents, as a server and to peers.
func (d *Direct) ClientCert() tls.Certificate { return d.tls.Certificates[0] }

// Issue makes a ticket as direct_ticket does.
func (d *Direct) Issue(kind, vm string) (addr, ticket, cert string, err error) {
	t, err := d.issue(kind, vm)
	return t.Addr, t.Ticket, t.Cert, err
}

// SetClock replaces the clock tickets expire by.
func (d *Direct) SetClock(now func() time.Time) { d.now = now }

// CutExport makes r's next disk export drop its stream after n bytes.
func (r *Remote) CutExport(n int64) { r.cutExport.Store(n) }

// CutImport makes the next disk import on any node of this process drop
// its first stream after n bytes.
func CutImport(n int64) { cutImport.Store(n) }

// SetResumeTiming shortens how a node's import resumes (tries, the first
// backoff, the wait for a new stream); the returned func restores it.
func SetResumeTiming(tries int, backoff, wait time.Duration) func() {
	p, w := importResume, resumeWait
	importResume.Tries, importResume.Backoff, resumeWait = tries, backoff, wait
	return func() { importResume, resumeWait = p, w }
}

// BoundAddr is the address d's listener is bound to.
func (d *Direct) BoundAddr() string { return d.ln.Addr().String() }
