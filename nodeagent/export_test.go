package nodeagent

import "time"

// Kinds of direct tickets, for tests.
const (
	KindAgent  = kindAgent
	KindTunnel = kindTunnel
)

// Issue makes a ticket as direct_ticket does.
func (d *Direct) Issue(kind, vm string) (addr, ticket, cert string, err error) {
	t, err := d.issue(kind, vm)
	return t.Addr, t.Ticket, t.Cert, err
}

// SetClock replaces the clock tickets expire by.
func (d *Direct) SetClock(now func() time.Time) { d.now = now }

// CutExport makes r's next disk export drop its stream after n bytes.
func (r *Remote) CutExport(n int64) { r.cutExport.Store(n) }
