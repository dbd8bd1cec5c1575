package api_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/minionsdev/minions/service"
)

// TestExecStdinIsBounded: a client that pushes stdin in maximal frames to
// a command that never reads it is held back (its writes block) after a
// bounded amount, instead of the server buffering everything it sends.
func TestExecStdinIsBounded(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	if _, err := fx.client("owner").Create(ctx, service.CreateRequest{Name: "web"}, nil); err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(fx.url)
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := `{"command":"sleep 600"}`
	fmt.Fprintf(conn, "POST /v1/vms/web/exec HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nConnection: Upgrade\r\nUpgrade: minions-exec\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", u.Host, fx.tokens["owner"], len(body), body)
	br := bufio.NewReader(conn)
	status, err := br.ReadString('\n')
	if err != nil || !strings.Contains(status, "101") {
		t.Fatalf("exec upgrade: %q %v", status, err)
	}

	// 1 MiB frames, the largest the protocol allows, up to 128 MiB.
	const frame, limit = 1 << 20, 128 << 20
	var sent atomic.Int64
	go func() {
		buf := make([]byte, 5+frame)
		buf[0] = 'i'
		binary.BigEndian.PutUint32(buf[1:5], frame)
		for sent.Load() < limit {
			if _, err := conn.Write(buf); err != nil {
				return
			}
			sent.Add(frame)
		}
	}()
	// Wait until the writer makes no progress for 2 s.
	last, since := int64(-1), time.Now()
	for time.Since(since) < 2*time.Second {
		if n := sent.Load(); n != last {
			last, since = n, time.Now()
		}
		if last >= limit {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// What is in flight: the SSH channel window to the agent (2 MiB), the
	// guest's pipe, the server's queue and frame (~1.3 MiB) and the
	// loopback socket buffers (a few MiB each way).
	t.Logf("the client got %d MiB out before its writes blocked", last>>20)
	if last >= 32<<20 {
		t.Fatalf("the server took %d MiB of stdin for a command that reads none", last>>20)
	}
}
