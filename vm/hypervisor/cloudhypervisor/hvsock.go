package cloudhypervisor

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// DialAgent connects to port in the guest through Cloud Hypervisor's hybrid
// vsock unix socket at path: it writes "CONNECT <port>\n", reads
// "OK <host port>\n" and returns the connection, which is then a raw stream
// to the guest listener. Nothing past the OK line is consumed. A refused
// handshake (no listener in the guest yet, or the VMM closing the
// connection) is errs.Unavailable, so callers may retry while the guest
// boots; ctx bounds the dial and the handshake.
func DialAgent(ctx context.Context, path string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, errs.New(errs.Unavailable, "dial hybrid vsock %s: %w", path, err)
	}
	if err := handshake(ctx, conn, port); err != nil {
		conn.Close()
		return nil, fmt.Errorf("dial hybrid vsock %s port %d: %w", path, port, err)
	}
	return conn, nil
}

func handshake(ctx context.Context, conn net.Conn, port uint32) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		return errs.New(errs.Unavailable, "send CONNECT: %w", err)
	}
	// Read the answer one byte at a time so that no guest data after the
	// line is swallowed.
	var line []byte
	var b [1]byte
	for {
		n, err := conn.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				break
			}
			line = append(line, b[0])
			if len(line) > 64 {
				return fmt.Errorf("handshake answer too long: %q", line)
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return errs.New(errs.Unavailable, "read handshake answer: %w", ctx.Err())
			}
			return errs.New(errs.Unavailable, "read handshake answer (guest not listening on the port?): %w", err)
		}
	}
	f := strings.Fields(string(line))
	if len(f) != 2 || f[0] != "OK" {
		return fmt.Errorf("unexpected handshake answer %q", line)
	}
	if _, err := strconv.ParseUint(f[1], 10, 32); err != nil {
		return fmt.Errorf("unexpected handshake answer %q", line)
	}
	return conn.SetDeadline(time.Time{})
}
