package nodeagent

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/internal/errs"
)

// A stream is one end of a byte stream carried over two NATS subjects:
// it publishes frames on out and receives the peer's frames on the
// subject it subscribed (see newStream). Frames:
//
//	'D' seq(8) data   bytes, seq counting from 1 (NATS keeps one
//	                  publisher's messages in order; a gap breaks the stream)
//	'A' n(8)          the peer's reader has consumed n bytes in all
//	'X'               the peer closed
//
// Flow control is a byte window: a writer never has more than
// streamWindow bytes unconsumed by the peer's reader, so a receiver's
// buffer is bounded and the subscription callback never blocks.
type stream struct {
	conn  *fabric.Conn
	out   string
	unsub func() error
	local string // for LocalAddr/RemoteAddr
	peer  string

	wmu sync.Mutex // serialises Write

	mu         sync.Mutex
	wake       chan struct{} // closed and replaced on every change
	buf        []byte        // received, unread
	rseq       uint64        // last data frame received
	consumed   uint64        // bytes read by our reader
	acked      uint64        // consumed as last told to the peer
	sent       uint64        // bytes we sent
	wseq       uint64        // last data frame sent
	peerRead   uint64        // bytes the peer's reader consumed
	peerClosed bool
	broken     error
	closed     bool
	rdl, wdl   time.Time
}

const (
	streamWindow = 1 << 20   // bytes in flight per direction
	streamFrame  = 256 << 10 // largest data frame
)

// newStream subscribes in and returns a stream publishing on out.
func newStream(conn *fabric.Conn, in, out, local, peer string) (*stream, error) {
	s := &stream{conn: conn, out: out, local: local, peer: peer, wake: make(chan struct{})}
	unsub, err := conn.Subscribe(in, func(m fabric.Msg) { s.frame(m.Data) })
	if err != nil {
		return nil, err
	}
	s.unsub = unsub
	return s, nil
}

// signal wakes every waiter; s.mu is held.
func (s *stream) signal() {
	close(s.wake)
	s.wake = make(chan struct{})
}

func (s *stream) frame(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(b) == 0 || s.closed {
		return
	}
	switch b[0] {
	case 'D':
		if len(b) < 9 {
			s.broken = errs.New(errs.Unavailable, "agent stream: short frame")
			break
		}
		seq := binary.BigEndian.Uint64(b[1:9])
		if seq != s.rseq+1 {
			s.broken = errs.New(errs.Unavailable, "agent stream: frame %d lost (got %d)", s.rseq+1, seq)
			break
		}
		s.rseq = seq
		s.buf = append(s.buf, b[9:]...)
		if len(s.buf) > streamWindow {
			s.broken = errs.New(errs.Unavailable, "agent stream: peer overran the window")
		}
	case 'A':
		if len(b) == 9 {
			if n := binary.BigEndian.Uint64(b[1:]); n > s.peerRead {
				s.peerRead = n
			}
		}
	case 'X':
		s.peerClosed = true
	}
	s.signal()
}

// wait waits for a change or the deadline dl; s.mu is not held.
func wait(ch chan struct{}, dl time.Time) error {
	if dl.IsZero() {
		<-ch
		return nil
	}
	d := time.Until(dl)
	if d <= 0 {
		return os.ErrDeadlineExceeded
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return os.ErrDeadlineExceeded
	}
}

func (s *stream) Read(p []byte) (int, error) {
	for {
		s.mu.Lock()
		switch {
		case s.closed:
			s.mu.Unlock()
			return 0, net.ErrClosed
		case len(s.buf) > 0:
			n := copy(p, s.buf)
			s.buf = s.buf[n:]
			if len(s.buf) == 0 {
				s.buf = nil
			}
			s.consumed += uint64(n)
			var ack []byte
			if s.consumed-s.acked >= streamWindow/4 || len(s.buf) == 0 && s.consumed != s.acked {
				s.acked = s.consumed
				ack = binary.BigEndian.AppendUint64([]byte{'A'}, s.consumed)
			}
			s.mu.Unlock()
			if ack != nil {
				s.conn.Publish(s.out, ack)
			}
			return n, nil
		case s.broken != nil:
			err := s.broken
			s.mu.Unlock()
			return 0, err
		case s.peerClosed:
			s.mu.Unlock()
			return 0, io.EOF
		case !s.rdl.IsZero() && !time.Now().Before(s.rdl):
			s.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		ch, dl := s.wake, s.rdl
		s.mu.Unlock()
		if err := wait(ch, dl); err != nil {
			return 0, err
		}
	}
}

func (s *stream) Write(p []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	done := 0
	for done < len(p) {
		s.mu.Lock()
		switch {
		case s.closed:
			s.mu.Unlock()
			return done, net.ErrClosed
		case s.broken != nil:
			err := s.broken
			s.mu.Unlock()
			return done, err
		case s.peerClosed:
			s.mu.Unlock()
			return done, io.ErrClosedPipe
		case !s.wdl.IsZero() && !time.Now().Before(s.wdl):
			s.mu.Unlock()
			return done, os.ErrDeadlineExceeded
		}
		avail := int(streamWindow - (s.sent - s.peerRead))
		if avail <= 0 {
			ch, dl := s.wake, s.wdl
			s.mu.Unlock()
			if err := wait(ch, dl); err != nil {
				return done, err
			}
			continue
		}
		n := min(avail, len(p)-done, streamFrame)
		s.sent += uint64(n)
		s.wseq++
		f := make([]byte, 9, 9+n)
		f[0] = 'D'
		binary.BigEndian.PutUint64(f[1:9], s.wseq)
		f = append(f, p[done:done+n]...)
		s.mu.Unlock()
		if err := s.conn.Publish(s.out, f); err != nil {
			s.mu.Lock()
			s.broken = errs.New(errs.Unavailable, "agent stream: %w", err)
			s.signal()
			s.mu.Unlock()
			return done, err
		}
		done += n
	}
	return done, nil
}

// Close tells the peer and stops receiving. Idempotent.
func (s *stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.signal()
	s.mu.Unlock()
	s.conn.Publish(s.out, []byte{'X'})
	return s.unsub()
}

// done reports whether the stream is closed at either end.
func (s *stream) done() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed || s.peerClosed || s.broken != nil
}

type streamAddr string

func (a streamAddr) Network() string { return "nats" }
func (a streamAddr) String() string  { return string(a) }

func (s *stream) LocalAddr() net.Addr  { return streamAddr(s.local) }
func (s *stream) RemoteAddr() net.Addr { return streamAddr(s.peer) }

func (s *stream) SetDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdl, s.wdl = t, t
	s.signal()
	s.mu.Unlock()
	return nil
}

func (s *stream) SetReadDeadline(t time.Time) error {
	s.mu.Lock()
	s.rdl = t
	s.signal()
	s.mu.Unlock()
	return nil
}

func (s *stream) SetWriteDeadline(t time.Time) error {
	s.mu.Lock()
	s.wdl = t
	s.signal()
	s.mu.Unlock()
	return nil
}

var _ net.Conn = (*stream)(nil)
