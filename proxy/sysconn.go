package proxy

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Raw system calls on the proxy's hot path.
//
// A Go system call made the ordinary way (syscall.Read, net.Conn.Read)
// enters and leaves the scheduler's syscall state, and entering it wakes
// the runtime's monitor thread (sysmon) whenever that thread is parked
// because every P was idle. A proxy waiting on a slow VM goes idle between
// every request, so each request woke sysmon, which then polled every
// 20 µs until the daemon was idle again: about a fifth of the daemon's CPU
// per proxied request against a real VM (perf, docs/proxy.md), each wake-up
// a context switch. The proxy's sockets are non-blocking and the poller
// waits for them, so their reads and writes never block: made with
// RawSyscall, they skip the syscall state and leave sysmon asleep.

// rawRead reads fd once, retrying EINTR. n < 0 never escapes: an error
// gives n == 0.
func rawRead(fd uintptr, b []byte) (int, syscall.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

// rawWrite writes b to fd once, retrying EINTR.
func rawWrite(fd uintptr, b []byte) (int, syscall.Errno) {
	if len(b) == 0 {
		return 0, 0
	}
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

// sysConn is a TCP connection whose Read and Write are raw system calls
// waited on by the runtime's poller (RawConn), with the errors, deadlines
// and semantics of net.Conn's: io.EOF at the end, *net.OpError with Op
// "read" or "write" otherwise (timeouts included), a Write that returns
// only when all of b is written or an error ends it. Everything else
// (Close, deadlines, addresses) is the wrapped connection's. Safe for
// concurrent use, as net.Conn: Reads are serialized, and so are Writes.
type sysConn struct {
	net.Conn // the connection as accepted (trackedConn), for the rest
	raw      syscall.RawConn

	// Each direction's state and callback, made once per connection so
	// that a call allocates nothing; rmu and wmu guard them.
	rmu   sync.Mutex
	rb    []byte
	rn    int
	rerr  syscall.Errno
	readF func(fd uintptr) bool

	wmu    sync.Mutex
	wb     []byte
	wn     int
	werr   syscall.Errno
	writeF func(fd uintptr) bool
}

// newSysConn wraps c, whose underlying connection is tc; nil when tc
// offers no raw access.
func newSysConn(c net.Conn, tc syscall.Conn) *sysConn {
	raw, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	s := &sysConn{Conn: c, raw: raw}
	s.readF, s.writeF = s.readStep, s.writeStep
	return s
}

// sysConnFor returns c with raw reads and writes when it is a TCP
// connection (possibly tracked by the connection limiter), else c.
func sysConnFor(c net.Conn) net.Conn {
	inner := c
	if t, ok := c.(*trackedConn); ok {
		inner = t.Conn
	}
	tc, ok := inner.(*net.TCPConn)
	if !ok {
		return c
	}
	if s := newSysConn(c, tc); s != nil {
		return s
	}
	return c
}

func (s *sysConn) readStep(fd uintptr) bool {
	s.rn, s.rerr = rawRead(fd, s.rb)
	return s.rerr != syscall.EAGAIN
}

func (s *sysConn) writeStep(fd uintptr) bool {
	for s.wn < len(s.wb) {
		n, e := rawWrite(fd, s.wb[s.wn:])
		if e == syscall.EAGAIN {
			return false // wait until writable, then go on
		}
		if e != 0 {
			s.werr = e
			return true
		}
		s.wn += n
	}
	return true
}

func (s *sysConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	s.rmu.Lock()
	defer s.rmu.Unlock()
	s.rb, s.rn, s.rerr = b, 0, 0
	err := s.raw.Read(s.readF)
	n, e := s.rn, s.rerr
	s.rb = nil
	switch {
	case err != nil:
		return 0, s.opError("read", err)
	case e != 0:
		return 0, s.opError("read", os.NewSyscallError("read", e))
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

func (s *sysConn) Write(b []byte) (int, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.wb, s.wn, s.werr = b, 0, 0
	err := s.raw.Write(s.writeF)
	n, e := s.wn, s.werr
	s.wb = nil
	switch {
	case err != nil:
		return n, s.opError("write", err)
	case e != 0:
		return n, s.opError("write", os.NewSyscallError("write", e))
	}
	return n, nil
}

// opError is err as net.Conn's Read or Write reports it: RawConn's own
// errors (deadline, closed) come as *net.OpError "raw-read"/"raw-write".
func (s *sysConn) opError(op string, err error) error {
	if oe, ok := err.(*net.OpError); ok {
		e := *oe
		e.Op = op
		return &e
	}
	return &net.OpError{Op: op, Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: err}
}

// CloseWrite half-closes the connection when the wrapped one can.
func (s *sysConn) CloseWrite() error {
	if cw, ok := s.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return &net.OpError{Op: "close", Net: "tcp", Source: s.LocalAddr(), Addr: s.RemoteAddr(), Err: syscall.EINVAL}
}
