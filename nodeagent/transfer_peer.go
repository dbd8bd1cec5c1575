package nodeagent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// Disk streams node to node: when both nodes have direct listeners, the
// control plane brokers one TLS connection from the source node straight
// to the target's listener, and sees only the calls' answers (not the
// bytes, which crossed it twice on the relayed path: decrypted and
// encrypted again, copied through a pipe).
//
//  1. direct_cert on the source: the fingerprint of the certificate its
//     direct listener presents, which it also presents as a client.
//  2. direct_ticket of kind peerdisk on the target, naming that
//     fingerprint: a one-time ticket only a connection presenting that
//     certificate redeems (redeem), bound to a fresh stream ID.
//  3. import_disk on the target with Direct set: it takes the connection
//     parked for that stream ID (transfer_direct.go), as for the control
//     plane's own.
//  4. export_disk on the source with To (the target's address, its
//     certificate's fingerprint, the ticket): it dials the target, pins
//     its certificate, sends the hello and writes the disk stream.
//
// The stream is the same (header, bytes, checksum trailer), verified by
// the importer. A failure before any byte went (no direct listener on
// either end, no route between the nodes) reports ErrNoPeerPath and
// leaves nothing; the caller then relays the stream as before.

// ErrNoPeerPath is ImportDiskFromPeer's answer when there is no direct
// node-to-node path: nothing was made, relay the stream instead.
var ErrNoPeerPath = engine.ErrNoPeerPath

var _ engine.PeerImporter = (*Remote)(nil)

// peerDial tells export_disk where to write the stream.
type peerDial struct {
	Addr   string `json:"addr"`
	Cert   string `json:"cert"` // hex SHA-256 of the target's certificate
	Ticket string `json:"ticket"`
}

// exportResult answers a peer export: the stream's bytes.
type exportResult struct {
	Bytes int64 `json:"bytes"`
}

var fingerprintRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[0-9a-f]{64}$`) })

// ImportDiskFromPeer makes instance spec.ID on r's node from the disk
// stream of the same instance on from's node, written node to node.
// It returns the instance and the stream's size in bytes. from must be a
// *Remote (another node of this control plane); else, or when either
// node has no direct listener or the source cannot reach the target, it
// is ErrNoPeerPath (wrapped) and nothing was made on either node. Any
// other failure is the import's or the export's (the import has undone
// itself, as ImportDisk does). A stream that drops on the way resumes
// (transfer_resume.go): the target asks, with a new single-use ticket,
// for the rest from the byte it has, and the source exports from there;
// the byte count is the whole stream's, once.
func (r *Remote) ImportDiskFromPeer(ctx context.Context, spec engine.ImportSpec, from engine.Engine, progress engine.Progress) (engine.Instance, int64, error) {
	return r.importFromPeer(ctx, peerDisk, spec, from, progress)
}

// peerStream is a kind of stream that goes node to node: its import and
// export methods and its counters on the target's Remote.
type peerStream struct {
	imp, exp     string
	peer, failed func(r *Remote) *atomic.Int64
	// cap is the capability the source node needs ("": none); a source
	// known to lack it is ErrNoPeerPath at once.
	cap string
}

var peerDisk = peerStream{imp: mImportDisk, exp: mExportDisk,
	peer:   func(r *Remote) *atomic.Int64 { return &r.diskPeer },
	failed: func(r *Remote) *atomic.Int64 { return &r.diskPeerFailed }}

// importFromPeer is ImportDiskFromPeer of stream kind k (a disk stream or
// a bundle, transfer_peer_bundle.go).
func (r *Remote) importFromPeer(ctx context.Context, k peerStream, spec engine.ImportSpec, from engine.Engine, progress engine.Progress) (engine.Instance, int64, error) {
	src, ok := from.(*Remote)
	if !ok || src == r || r.cfg.DirectTLS == nil {
		return engine.Instance{}, 0, ErrNoPeerPath
	}
	for _, n := range []*Remote{src, r} {
		if k.cap != "" && n.lacks(k.cap) {
			k.failed(r).Add(1)
			return engine.Instance{}, 0, fmt.Errorf("%w: node %s is of an older version (no %s)", ErrNoPeerPath, n.cfg.ID, k.cap)
		}
	}
	var sc ticketReply
	if err := src.call(ctx, mDirectCert, callRequest{}, nil, &sc); err != nil {
		return engine.Instance{}, 0, fmt.Errorf("%w: source node %s: %v", ErrNoPeerPath, src.cfg.ID, err)
	}
	if !fingerprintRE().MatchString(sc.Cert) {
		return engine.Instance{}, 0, fmt.Errorf("%w: source node %s: bad certificate fingerprint", ErrNoPeerPath, src.cfg.ID)
	}
	sid := newToken()
	var t ticketReply
	if err := r.call(ctx, mDirectTicket, callRequest{ID: sid, Kind: kindPeerDisk, Peer: sc.Cert}, nil, &t); err != nil {
		return engine.Instance{}, 0, fmt.Errorf("%w: target node %s: %v", ErrNoPeerPath, r.cfg.ID, err)
	}
	ictx, cancel := context.WithCancel(ctx)
	defer cancel()
	type imported struct {
		inst engine.Instance
		err  error
	}
	done := make(chan imported, 1)
	resume := make(chan resumeReq, 1)
	var took atomic.Int64 // the stream's bytes, as the target says at its end
	go func() {
		p := func(step string) {
			if step == streamReady {
				return
			}
			if n, ok := parseStreamBytes(step); ok {
				took.Store(n)
				return
			}
			if m, ok := parseResume(step); ok {
				if m.To != nil {
					select { // one at a time: the node waits for it
					case resume <- m:
					case <-ictx.Done():
					}
				}
				return
			}
			progress.Say(step)
		}
		inst, err := r.instance(ictx, k.imp, callRequest{ID: spec.ID, Stream: sid, Import: &spec, Direct: true, Meter: true, Resume: true, Peer: sc.Cert}, p)
		done <- imported{inst, err}
	}()
	type exported struct {
		res exportResult
		err error
	}
	export := func(id string, to peerDial, off int64) chan exported {
		ch := make(chan exported, 1)
		go func() {
			var res exportResult
			err := src.call(ictx, k.exp, callRequest{ID: spec.ID, Stream: id, To: &to, Offset: off}, nil, &res)
			ch <- exported{res, err}
		}()
		return ch
	}
	// The source writes the stream to the target; when it drops, the
	// target keeps what it took and asks (resume) for the rest from
	// there, with a new ticket; the source exports from that offset.
	exp := export(sid, peerDial{Addr: t.Addr, Cert: t.Cert, Ticket: t.Ticket}, 0)
	var eerr error
	var last exportResult
	resumed := false
	for {
		select {
		case e := <-exp:
			exp = nil
			eerr, last = e.err, e.res
			if eerr != nil && !resumed && errs.ClassOf(eerr) == errs.Unavailable && isNoRoute(eerr) {
				cancel() // the import waits for a connection that will not come
				<-done
				k.failed(r).Add(1)
				return engine.Instance{}, 0, fmt.Errorf("%w: %v", ErrNoPeerPath, eerr)
			}
			if eerr != nil && !droppedStream(eerr) {
				cancel() // the source cannot send it: no use resuming
			}
		case m := <-resume:
			// The dropped export ends on its own (the target closed its
			// end; its channel is buffered): the target waits for the
			// new one now, so it goes at once. On the source it waits
			// for the old one's lock of the instance.
			resumed = true
			r.diskResumed.Add(1)
			progress.Say(resumedLine(m))
			to := *m.To
			// A source whose agent restarted presents a new certificate,
			// which the target's own ticket does not name: a new ticket
			// for the same stream that names it.
			var nc ticketReply
			if err := src.call(ictx, mDirectCert, callRequest{}, nil, &nc); err == nil && fingerprintRE().MatchString(nc.Cert) && nc.Cert != sc.Cert {
				var nt ticketReply
				if err := r.call(ictx, mDirectTicket, callRequest{ID: m.Stream, Kind: kindPeerDisk, Peer: nc.Cert}, nil, &nt); err == nil {
					to, sc.Cert = peerDial{Addr: nt.Addr, Cert: nt.Cert, Ticket: nt.Ticket}, nc.Cert
				}
			}
			exp = export(m.Stream, to, m.At.Offset)
		case im := <-done:
			if im.err != nil {
				cancel() // an export still under way has no one to write to
			}
			if exp != nil {
				e := <-exp
				eerr, last = e.err, e.res
			}
			if im.err != nil {
				if eerr != nil && !droppedStream(eerr) {
					return engine.Instance{}, 0, eerr // the import ended because the export failed
				}
				return engine.Instance{}, 0, im.err
			}
			k.peer(r).Add(1)
			n := took.Load()
			if n == 0 && !resumed {
				n = last.Bytes // a node that does not say it: one whole stream
			}
			return im.inst, n, nil
		}
	}
}

// errPeerDialPrefix starts the errors of a source that could not reach
// the target (or was refused there): nothing went, and the caller
// relays instead.
const errPeerDialPrefix = "peer dial: "

func isNoRoute(err error) bool { return strings.Contains(err.Error(), errPeerDialPrefix) }

// exportFunc writes instance id's stream into w from byte off of it.
type exportFunc func(ctx context.Context, id string, off int64, w io.Writer) error

// exportDiskFunc is the node's disk stream export.
func (s *server) exportDiskFunc() (exportFunc, error) {
	t, ok := s.cfg.Engine.(engine.Transferer)
	if !ok {
		return nil, errs.New(errs.FailedPrecondition, "this node's engine does not ship disks")
	}
	return func(ctx context.Context, id string, off int64, w io.Writer) error {
		if off == 0 {
			return t.ExportDisk(ctx, id, w)
		}
		// The rest of a dropped stream, from the target's offset.
		r, ok := t.(engine.DiskResumer)
		if !ok {
			return errs.New(errs.FailedPrecondition, "this node's engine does not resume disk streams")
		}
		return r.ExportDiskFrom(ctx, id, off, w)
	}, nil
}

// exportToPeer is export_disk (or export_bundle) with To: the stream
// written by export straight to another node's direct listener.
func (s *server) exportToPeer(ctx context.Context, req callRequest, export exportFunc, err error) (exportResult, error) {
	return s.exportToPeerStep(ctx, req, export, err, "")
}

// exportToPeerStep is exportToPeer whose test-only mid-stream pause is
// movepause step pause ("": movepause.Transfer).
func (s *server) exportToPeerStep(ctx context.Context, req callRequest, export exportFunc, err error, pause string) (exportResult, error) {
	if err != nil {
		return exportResult{}, err
	}
	if !tokenRE().MatchString(req.Stream) || !fingerprintRE().MatchString(req.To.Cert) || req.To.Addr == "" {
		return exportResult{}, errs.New(errs.InvalidArgument, "export to a peer: bad stream id, address or certificate")
	}
	if s.cfg.Direct == nil {
		return exportResult{}, errs.New(errs.Unavailable, errPeerDialPrefix+"node %s has no direct listener", s.cfg.ID)
	}
	c, err := s.cfg.Direct.dialPeer(ctx, *req.To, req.Stream)
	if err != nil {
		return exportResult{}, err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() }) // a cancelled call ends at once
	defer stop()
	w := &idleStream{ctx: ctx, st: c, pauseAfter: pauseAfter, pauseStep: pause}
	if req.Offset != 0 {
		w.pauseAfter = 0 // the test-only pause is the first stream's
	}
	if err := export(ctx, req.ID, req.Offset, w); err != nil {
		return exportResult{Bytes: w.written}, err
	}
	// The importer reads up to the trailer: a clean close after it.
	if err := c.CloseWrite(); err != nil {
		return exportResult{Bytes: w.written}, errs.New(errs.Unavailable, "export to a peer: %v", err)
	}
	return exportResult{Bytes: w.written}, nil
}

// dialPeer opens a disk stream connection to another node's direct
// listener: TLS with this listener's certificate as the client's, the
// target's pinned to to.Cert, then the hello with to.Ticket. Errors
// before the hello went through are errs.Unavailable starting with
// errPeerDialPrefix (no route: the caller relays instead). Each Write's
// records go out together (batchedTLS).
func (d *Direct) dialPeer(ctx context.Context, to peerDial, sid string) (*batchedTLS, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: d.tls.Certificates,
		// The target's certificate is self-signed: pinned to the
		// fingerprint its own fabric subjects announced.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || fabric.CertFingerprint(cs.PeerCertificates[0].Raw) != to.Cert {
				return errs.New(errs.PermissionDenied, "the target node presented a certificate other than the one it announced")
			}
			return nil
		}}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := (&net.Dialer{}).DialContext(dctx, "tcp", to.Addr)
	if err != nil {
		return nil, errs.New(errs.Unavailable, errPeerDialPrefix+"%s: %v", to.Addr, err)
	}
	sc := &stallConn{Conn: raw}
	bc := &batchConn{Conn: sc}
	tc := tls.Client(bc, cfg)
	if err := tc.HandshakeContext(dctx); err != nil {
		raw.Close()
		return nil, errs.New(errs.Unavailable, errPeerDialPrefix+"%s: %v", to.Addr, err)
	}
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := json.Marshal(hello{Ticket: to.Ticket, Kind: kindPeerDisk, VM: sid})
	if _, err := tc.Write(append(b, '\n')); err != nil {
		tc.Close()
		return nil, errs.New(errs.Unavailable, errPeerDialPrefix+"hello: %v", err)
	}
	line, err := readLine(tc, 4096)
	if err != nil {
		tc.Close()
		return nil, errs.New(errs.Unavailable, errPeerDialPrefix+"hello: %v", err)
	}
	var rep helloReply
	if err := json.Unmarshal(line, &rep); err != nil || !rep.OK {
		tc.Close()
		if rep.Error != nil {
			return nil, errs.New(errs.Unavailable, errPeerDialPrefix+"refused by the target: %v", fromWire(rep.Error))
		}
		return nil, errs.New(errs.Unavailable, errPeerDialPrefix+"bad hello reply %q", line)
	}
	tc.SetDeadline(time.Time{})
	sc.arm(diskStall)
	return &batchedTLS{Conn: tc, raw: bc}, nil
}

// PeerStreamCounts reports how many disk streams this Remote imported
// node to node, and how many such attempts found no path.
func (r *Remote) PeerStreamCounts() (peer, failed int64) {
	return r.diskPeer.Load(), r.diskPeerFailed.Load()
}
