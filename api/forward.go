package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// ForwardProto is the Upgrade token of POST /v1/vms/{name}/forward/{port}:
// after the 101 answer the connection carries the raw bytes of a TCP
// connection to that port on the guest's loopback, both ways.
const ForwardProto = "minions-forward"

// serveForward opens the forward before answering (so a refusal is an
// ordinary error response), then splices the hijacked connection to it.
func (h *handler) serveForward(w http.ResponseWriter, r *http.Request, c service.Caller) {
	if !upgradeRequested(r, ForwardProto) {
		writeError(w, errs.New(errs.InvalidArgument, "forward needs `Connection: Upgrade` and `Upgrade: %s`", ForwardProto))
		return
	}
	port, err := strconv.Atoi(r.PathValue("port"))
	if err != nil {
		writeError(w, errs.New(errs.InvalidArgument, "port %q: want a number from 1 to 65535", r.PathValue("port")))
		return
	}
	dctx, cancel := context.WithTimeout(r.Context(), h.cfg.RequestTimeout)
	fwd, err := h.svc.Forward(dctx, c, r.PathValue("name"), port)
	cancel()
	if err != nil {
		writeError(w, err)
		return
	}
	defer fwd.Close()
	conn, brw, ok := switchProtocols(w, "forward", ForwardProto)
	if !ok {
		return
	}
	defer conn.Close()
	// The forward outlives the request's context (the connection is
	// hijacked) but not the credential it was opened with.
	var once sync.Once
	closeBoth := func() { once.Do(func() { conn.Close(); fwd.Close() }) }
	unbind := context.AfterFunc(r.Context(), func() {
		if errors.Is(context.Cause(r.Context()), errs.Unauthenticated) {
			closeBoth()
		}
	})
	defer unbind()
	done := make(chan struct{})
	go func() {
		io.Copy(conn, fwd)
		closeBoth()
		close(done)
	}()
	io.Copy(fwd, brw.Reader) // what the client sent after the request, then the rest
	closeBoth()
	<-done
}

// Forward opens a TCP connection to port on VM name's loopback through
// the API's forward upgrade; close it when done.
func (c *Client) Forward(ctx context.Context, name string, port int) (io.ReadWriteCloser, error) {
	hreq, err := c.newRequest(ctx, http.MethodPost, vmPath(name, "forward", strconv.Itoa(port)), nil)
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", ForwardProto)
	resp, err := c.send(hreq)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		if resp.StatusCode < 300 {
			return nil, fmt.Errorf("minions api: forward: server answered %s, not an upgrade", resp.Status)
		}
		return nil, responseError(resp)
	}
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, errors.New("minions api: forward: upgraded body is not writable")
	}
	return conn, nil
}
