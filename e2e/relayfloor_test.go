package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/proxy"
	"github.com/minionsdev/minions/proxy/proxytest"
)

// floorEnv names the upstream of the floor relay: set, this test binary
// runs as that relay (TestMain) and nothing else.
const (
	floorEnv   = "MINIONS_E2E_FLOOR_UPSTREAM"
	floorGoEnv = "MINIONS_E2E_FLOOR_GO"
)

// runFloorRelay is the least any user-space proxy can spend per request
// on this host, measured beside the daemon in BenchmarkProxy
// (MINIONS_E2E_PROXY_FLOOR=1): a TCP relay with no HTTP at all, one
// thread on a level-triggered epoll loop (no Go scheduler between
// events: GOMAXPROCS=1 and the loop's goroutine never parks), one
// upstream connection per client connection, per request one
// epoll_wait, read and write each way. It listens on a loopback port,
// prints its address, and exits when stdin closes or has data. Its
// epoll_wait, reads and writes are raw system calls: the runtime never
// sees them (see proxy/sysconn.go).
//
// floorGoEnv picks another relay instead: 1, the same relay in the Go
// way (a goroutine per direction copying between net.Conns); lockstep,
// one goroutine per connection (runGoRelay); raw, that with raw reads and
// writes (runGoRawRelay); proxy, the daemon's proxy code alone
// (runProxyAlone).
func runFloorRelay(upstream string) error {
	switch os.Getenv(floorGoEnv) {
	case "1":
		return runGoRelay(upstream, false)
	case "lockstep":
		return runGoRelay(upstream, true)
	case "raw":
		return runGoRawRelay(upstream)
	case "proxy":
		return runProxyAlone(upstream)
	}
	runtime.LockOSThread()
	up, err := netip.ParseAddrPort(upstream)
	if err != nil {
		return err
	}
	ln, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := syscall.Bind(ln, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return err
	}
	if err := syscall.Listen(ln, 64); err != nil {
		return err
	}
	sa, err := syscall.Getsockname(ln)
	if err != nil {
		return err
	}
	fmt.Printf("127.0.0.1:%d\n", sa.(*syscall.SockaddrInet4).Port)

	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return err
	}
	add := func(fd int) error {
		return syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)})
	}
	if err := add(ln); err != nil {
		return err
	}
	// Standard input in the loop too: its end ends the relay (a goroutine
	// waiting for it would never get the only P from this thread).
	if err := add(0); err != nil {
		return err
	}
	peer := map[int]int{}
	drop := func(fd int) {
		p := peer[fd]
		for _, f := range []int{fd, p} {
			_ = syscall.EpollCtl(ep, syscall.EPOLL_CTL_DEL, f, nil)
			syscall.Close(f)
			delete(peer, f)
		}
	}
	upSA := &syscall.SockaddrInet4{Addr: up.Addr().As4(), Port: int(up.Port())}
	buf := make([]byte, 64<<10)
	events := make([]syscall.EpollEvent, 64)
	for {
		// A raw system call: the runtime does not see the thread block,
		// so its monitor does not hand the P to another thread to poll
		// Go's own network while this one waits (it did with
		// syscall.EpollWait: 132 µs/req where the daemon spent 100).
		// Its preemption signal every 10 ms ends a wait with EINTR.
		r1, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, uintptr(ep), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), ^uintptr(0), 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			return errno
		}
		n := int(r1)
		for _, ev := range events[:n] {
			fd := int(ev.Fd)
			if fd == 0 {
				return nil
			}
			if fd == ln {
				c, _, err := syscall.Accept4(ln, syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC)
				if err != nil {
					continue
				}
				// The upstream connection, dialled blocking (once per
				// client connection, not per request).
				u, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
				if err == nil {
					if err = syscall.Connect(u, upSA); err == nil {
						err = syscall.SetNonblock(u, true)
					}
				}
				if err != nil {
					syscall.Close(c)
					if u >= 0 {
						syscall.Close(u)
					}
					continue
				}
				for _, f := range []int{c, u} {
					_ = syscall.SetsockoptInt(f, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
				}
				peer[c], peer[u] = u, c
				if add(c) != nil || add(u) != nil {
					drop(c)
				}
				continue
			}
			p, ok := peer[fd]
			if !ok {
				continue
			}
			// Level-triggered: one read per event, no read that ends in
			// EAGAIN.
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
			if e == syscall.EAGAIN || e == syscall.EINTR {
				continue
			}
			if e != 0 || r == 0 {
				drop(fd)
				continue
			}
			if !writeAll(p, buf[:r]) {
				drop(fd)
			}
		}
	}
}

// runGoRelay is runFloorRelay in the Go way (see there). lockstep: one
// goroutine per connection instead, the daemon's shape: it reads what
// the client sent, writes it upstream, reads what the upstream answers
// and writes that back, in turn (right for a client that waits for each
// answer, as the benchmark's do).
func runGoRelay(upstream string, lockstep bool) error {
	return serveRelay(upstream, func(c, u net.Conn) {
		if lockstep {
			buf := make([]byte, 64<<10)
			for {
				for _, p := range [2][2]net.Conn{{c, u}, {u, c}} {
					n, err := p[0].Read(buf)
					if err != nil {
						return
					}
					if _, err := p[1].Write(buf[:n]); err != nil {
						return
					}
				}
			}
		}
		go func() { _, _ = io.Copy(c, u); c.Close() }()
		_, _ = io.Copy(u, c)
	})
}

// serveRelay listens on a loopback port, prints its address, and relays
// each connection with relay(client, upstream connection), both closed
// after it; it exits when stdin ends.
func serveRelay(upstream string, relay func(c, u net.Conn)) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr())
	watchStdin(func() { os.Exit(0) })
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				return
			}
			defer u.Close()
			relay(c, u)
		}()
	}
}

// watchStdin calls done when stdin ends or has data. It waits in the
// runtime's poller: a goroutine blocked in an ordinary read would keep a
// thread in a system call.
func watchStdin(done func()) {
	_ = syscall.SetNonblock(syscall.Stdin, true) // before NewFile, so that it polls
	f := os.NewFile(uintptr(syscall.Stdin), "stdin")
	go func() {
		_, _ = io.Copy(io.Discard, f)
		done()
	}()
}

// runGoRawRelay is runGoRelay's lockstep shape with the daemon's way of
// waiting (proxy/sysconn.go): reads and writes are raw system calls made
// from RawConn callbacks, and the goroutine parks in the runtime's poller
// only on EAGAIN. What it costs beyond the bare relay is what Go's
// scheduler costs the daemon per request, without HTTP.
func runGoRawRelay(upstream string) error {
	return serveRelay(upstream, func(c, u net.Conn) {
		cr, err1 := c.(*net.TCPConn).SyscallConn()
		ur, err2 := u.(*net.TCPConn).SyscallConn()
		if err1 != nil || err2 != nil {
			return
		}
		buf := make([]byte, 64<<10)
		var n int
		var e syscall.Errno
		readF := func(fd uintptr) bool {
			r, _, en := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)))
			n, e = int(r), en
			return en != syscall.EAGAIN
		}
		var out []byte
		writeF := func(fd uintptr) bool {
			for len(out) > 0 {
				r, _, en := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&out[0])), uintptr(len(out)))
				if en == syscall.EAGAIN {
					return false
				}
				if en != 0 {
					e = en
					return true
				}
				out = out[r:]
			}
			return true
		}
		for {
			for _, p := range [2][2]syscall.RawConn{{cr, ur}, {ur, cr}} {
				if err := p[0].Read(readF); err != nil || e != 0 || n <= 0 {
					return
				}
				out = buf[:n]
				if err := p[1].Write(writeF); err != nil || e != 0 {
					return
				}
			}
		}
	})
}

// oneRoute routes every host to one public, running VM.
type oneRoute struct{ rt proxy.Route }

func (o oneRoute) Route(context.Context, string) (proxy.Route, error) { return o.rt, nil }

// runProxyAlone runs the daemon's proxy (package proxy, local mode, the
// JSON access log encoded and discarded, rate limit off) in a process of
// its own with nothing else in it: one route to upstream, kept in memory.
// Against the daemon in the same rounds it tells what the daemon's
// process (its other goroutines, timers, heap and threads) adds to the
// proxy's own code.
func runProxyAlone(upstream string) error {
	p, err := proxy.New(proxy.Config{HTTPBind: "127.0.0.1:0", Secret: make([]byte, proxy.SecretSize),
		Log:           slog.New(slog.DiscardHandler),
		AccessLog:     proxy.NewJSONAccessLog(io.Discard, slog.String("component", "access")),
		RatePerSecond: -1, UpstreamHeaderTimeout: 30 * time.Second},
		oneRoute{proxy.Route{VMID: "floor", VMName: "pbench", Upstream: upstream, Public: true, Running: true}}, nil)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr())
	ctx, cancel := context.WithCancel(context.Background())
	watchStdin(cancel)
	return p.Serve(ctx, nil, ln)
}

// writeAll writes b to the non-blocking socket fd with raw system calls,
// waiting for room when it has none (the relay's messages are small: it
// never does here).
func writeAll(fd int, b []byte) bool {
	for len(b) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch {
		case e == syscall.EAGAIN:
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, 1000)
			continue
		case e == syscall.EINTR:
			continue
		case e != 0 || n == 0:
			return false
		}
		b = b[n:]
	}
	return true
}

// startFloorRelay starts the floor relay (this test binary) in front of
// upstream and returns its address and PID; it ends with the benchmark.
func startFloorRelay(b *testing.B, upstream string) (string, int) {
	b.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), floorEnv+"="+upstream, "GOMAXPROCS=1")
	switch os.Getenv("MINIONS_E2E_PROXY_FLOOR") {
	case "go":
		cmd.Env = append(cmd.Env, floorGoEnv+"=1")
	case "go1":
		cmd.Env = append(cmd.Env, floorGoEnv+"=lockstep")
	case "go1raw":
		cmd.Env = append(cmd.Env, floorGoEnv+"=raw")
	case "proxy":
		cmd.Env = append(cmd.Env, floorGoEnv+"=proxy")
	}
	line := proxytest.StartChild(b, b, cmd)
	return line, cmd.Process.Pid
}
