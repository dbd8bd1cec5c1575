package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/service"
)

// TestForwardCommand: `minions forward NAME PORT` carries a local
// connection to a server on the VM's loopback, in-process and through the
// API alike, and stops when interrupted.
func TestForwardCommand(t *testing.T) {
	fx := newFixture(t)
	ctx := testCtx(t)
	owner := fx.svc.As(fx.callers["owner"])
	if _, err := owner.Create(ctx, service.CreateRequest{Name: "web"}, nil); err != nil {
		t.Fatal(err)
	}
	// The server "in the guest" (the test agent's guest is this host).
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				line, _ := bufio.NewReader(c).ReadString('\n')
				fmt.Fprintf(c, "echo %s", line)
			}()
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	for name, be := range map[string]service.Backend{"in-process": owner, "http": fx.client("owner")} {
		t.Run(name, func(t *testing.T) {
			rctx, cancel := context.WithCancel(ctx)
			out := &syncBuffer{}
			env := &cli.Env{Stdin: strings.NewReader(""), Stdout: out, Stderr: io.Discard, Getenv: func(string) string { return "" },
				Open: func(context.Context, *cli.Global) (service.Backend, error) { return be, nil }}
			code := make(chan int, 1)
			go func() {
				code <- cli.Run(rctx, env, []string{"forward", "web", port, "--listen", "127.0.0.1:0", "--json"})
			}()
			waitFor(t, func() bool { return strings.Contains(out.String(), "listen") })
			var info struct{ Listen string }
			if err := json.Unmarshal([]byte(out.String()), &info); err != nil {
				t.Fatalf("output %q: %v", out.String(), err)
			}
			c, err := net.Dial("tcp", info.Listen)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "hello\n")
			got, _ := io.ReadAll(c)
			c.Close()
			if string(got) != "echo hello\n" {
				t.Fatalf("through the forward: %q", got)
			}
			cancel()
			select {
			case n := <-code:
				if n != 0 {
					t.Fatalf("forward exited %d", n)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("forward did not stop when interrupted")
			}
		})
	}
	// Bad input changes nothing and says why.
	env := &cli.Env{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard, Getenv: func(string) string { return "" },
		Open: func(context.Context, *cli.Global) (service.Backend, error) { return owner, nil }}
	if n := cli.Run(ctx, env, []string{"forward", "web", "0"}); n != 2 {
		t.Fatalf("port 0: exit %d, want 2", n)
	}
	if n := cli.Run(ctx, env, []string{"forward", "nope", port}); n == 0 {
		t.Fatal("forward to a missing vm succeeded")
	}
}
