package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"github.com/minionsdev/minions/internal/errs"
)

// forwardCmd forwards a local TCP port to a port on a VM's loopback
// (service.Backend.Forward), locally or through a daemon's API. Over ssh,
// `ssh -L` to vm@host does the same, so it is not offered there.
func forwardCmd() *Command {
	return &Command{Name: "forward", Usage: "NAME PORT [--listen ADDR]", HostOnly: true, MinArgs: 2, MaxArgs: 2,
		Summary: "Forward a local TCP port to a port on a VM's loopback (until interrupted)",
		Flags: func(fs *flag.FlagSet) {
			fs.String("listen", "", "local address to listen on (default 127.0.0.1:PORT; port 0 picks a free one)")
		},
		Run: runForward}
}

func runForward(ctx context.Context, x *Ctx) error {
	name := x.Args[0]
	port, err := strconv.Atoi(x.Args[1])
	if err != nil || port < 1 || port > 65535 {
		return errs.New(errs.InvalidArgument, "port %q: want a number from 1 to 65535", x.Args[1])
	}
	listen := strFlag(x.FS, "listen")
	if listen == "" {
		listen = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	}
	be, err := x.Backend(ctx)
	if err != nil {
		return err
	}
	if _, err := be.Get(ctx, name); err != nil {
		return err
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", listen)
	if err != nil {
		return errs.New(errs.FailedPrecondition, "listen on %s: %v", listen, err)
	}
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	addr := ln.Addr().String()
	if x.G.JSON {
		json.NewEncoder(x.Stdout).Encode(map[string]any{"listen": addr, "vm": name, "port": port})
	} else {
		fmt.Fprintf(x.Stdout, "forwarding %s to port %d of %s (ctrl+c stops)\n", addr, port, name)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return errs.New(errs.Unavailable, "accept on %s: %v", addr, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			fwd, err := be.Forward(ctx, name, port)
			if err != nil {
				fmt.Fprintf(x.Stderr, "minions: forward %s: %v\n", c.RemoteAddr(), err)
				return
			}
			defer fwd.Close()
			stopConn := context.AfterFunc(ctx, func() { c.Close(); fwd.Close() })
			defer stopConn()
			done := make(chan struct{})
			go func() {
				io.Copy(fwd, c)
				if cw, ok := fwd.(interface{ CloseWrite() error }); ok {
					cw.CloseWrite()
				}
				close(done)
			}()
			io.Copy(c, fwd)
			c.Close()
			fwd.Close()
			<-done
		}()
	}
}
