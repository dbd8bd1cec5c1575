package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// Client calls a daemon's API. It is the HTTP service.Backend: the same
// results and error classes as calling the service in-process
// (Service.As), proven by service/backendtest. It is safe for concurrent
// use.
type Client struct {
	base  string // scheme://host, no trailing slash
	token string
	hc    *http.Client
}

var _ service.Backend = (*Client)(nil)

// NewClient returns a client for target: "unix:///run/minions/api.sock",
// "http://host:3000" or "https://host". token may be empty (root on the
// unix socket needs none).
func NewClient(target, token string) (*Client, error) {
	c := &Client{token: token}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 8
	switch {
	case strings.HasPrefix(target, "unix://"):
		path := strings.TrimPrefix(target, "unix://")
		if path == "" || !strings.HasPrefix(path, "/") {
			return nil, errs.New(errs.InvalidArgument, "api address %q: want unix:///absolute/path", target)
		}
		tr.Proxy = nil
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
		c.base = "http://minions"
	default:
		if !strings.Contains(target, "://") {
			target = "http://" + target
		}
		u, err := url.Parse(target)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, errs.New(errs.InvalidArgument, "api address %q: want http(s)://host[:port] or unix:///path", target)
		}
		c.base = u.Scheme + "://" + u.Host + strings.TrimRight(u.Path, "/")
	}
	c.hc = &http.Client{Transport: tr}
	return c, nil
}

func (c *Client) newRequest(ctx context.Context, method, path string, body any) (*http.Request, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	return req, nil
}

// send sends req; an answer of 300 or above is its decoded error.
func (c *Client) send(req *http.Request) (*http.Response, error) {
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctxErr := req.Context().Err(); ctxErr != nil {
			return nil, ctxErr
		}
		return nil, errs.New(errs.Unavailable, "minions api at %s: %w", c.base, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, responseError(resp)
	}
	return resp, nil
}

// responseError decodes an error response.
func responseError(resp *http.Response) error {
	var body errorBody
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err := json.Unmarshal(b, &body); err != nil || body.Error.Code == "" {
		return fmt.Errorf("minions api: %s: %.200s", resp.Status, bytes.TrimSpace(b))
	}
	return body.Error.asError()
}

// do sends a JSON request and decodes a JSON response into out (if not nil).
// call is c.do decoding the answer into a new T.
func call[T any](ctx context.Context, c *Client, method, path string, body any) (T, error) {
	var v T
	return v, c.do(ctx, method, path, body, &v)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	req, err := c.newRequest(ctx, method, path, body)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("minions api: decode %s %s: %w", method, path, err)
	}
	return nil
}

// long runs a streamed operation, reporting each step to progress.
func (c *Client) long(ctx context.Context, path string, body any, progress service.Progress, out any) error {
	req, err := c.newRequest(ctx, http.MethodPost, path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", ndjson)
	resp, err := c.send(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), ndjson) {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var line streamLine
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return fmt.Errorf("minions api: bad stream line: %w", err)
		}
		switch {
		case line.Error != nil:
			return line.Error.asError()
		case line.Result != nil:
			return json.Unmarshal(line.Result, out)
		case line.Step != "" && progress != nil:
			progress(line.Step)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return errs.New(errs.Unavailable, "minions api: stream of %s broke: %w", path, err)
	}
	return errs.New(errs.Unavailable, "minions api: stream of %s ended without a result", path)
}

func vmPath(name string, rest ...string) string {
	p := "/v1/vms/" + url.PathEscape(name)
	for _, r := range rest {
		p += "/" + r
	}
	return p
}

// Whoami returns who the token (or the socket peer) is.
func (c *Client) Whoami(ctx context.Context) (service.Caller, error) {
	var w Whoami
	err := c.do(ctx, http.MethodGet, "/v1/whoami", nil, &w)
	return service.Caller{UserID: w.ID, Name: w.Name, Admin: w.Admin}, err
}

func (c *Client) Create(ctx context.Context, req service.CreateRequest, p service.Progress) (service.VM, error) {
	var v service.VM
	return v, c.long(ctx, "/v1/vms", req, p, &v)
}

func (c *Client) List(ctx context.Context) ([]service.VM, error) {
	return call[[]service.VM](ctx, c, http.MethodGet, "/v1/vms", nil)
}

func (c *Client) Get(ctx context.Context, name string) (service.VM, error) {
	return call[service.VM](ctx, c, http.MethodGet, vmPath(name), nil)
}

func (c *Client) Start(ctx context.Context, name string, p service.Progress) (service.VM, error) {
	var v service.VM
	return v, c.long(ctx, vmPath(name, "start"), nil, p, &v)
}

func (c *Client) Stop(ctx context.Context, name string) (service.VM, error) {
	return call[service.VM](ctx, c, http.MethodPost, vmPath(name, "stop"), nil)
}

func (c *Client) Restart(ctx context.Context, name string, p service.Progress) (service.VM, error) {
	var v service.VM
	return v, c.long(ctx, vmPath(name, "restart"), nil, p, &v)
}

func (c *Client) Destroy(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, vmPath(name), nil, nil)
}

func (c *Client) Status(ctx context.Context, name string) (service.GuestStatus, error) {
	return call[service.GuestStatus](ctx, c, http.MethodGet, vmPath(name, "status"), nil)
}

// Logs copies the console log to w; with follow it keeps copying until ctx
// ends (then it returns nil) or the VM is destroyed.
func (c *Client) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	req, err := c.newRequest(ctx, http.MethodGet, vmPath(name, "logs")+fmt.Sprintf("?follow=%t", follow), nil)
	if err != nil {
		return err
	}
	resp, err := c.send(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func (c *Client) CreateSnapshot(ctx context.Context, name string, req service.SnapshotRequest, p service.Progress) (service.Snapshot, error) {
	var s service.Snapshot
	return s, c.long(ctx, vmPath(name, "snapshots"), req, p, &s)
}

func (c *Client) ListSnapshots(ctx context.Context, name string) ([]service.Snapshot, error) {
	return call[[]service.Snapshot](ctx, c, http.MethodGet, vmPath(name, "snapshots"), nil)
}

func (c *Client) RestoreSnapshot(ctx context.Context, name, snap string, p service.Progress) (service.VM, error) {
	var v service.VM
	return v, c.long(ctx, vmPath(name, "snapshots", url.PathEscape(snap), "restore"), nil, p, &v)
}

func (c *Client) DeleteSnapshot(ctx context.Context, name, snap string) error {
	return c.do(ctx, http.MethodDelete, vmPath(name, "snapshots", url.PathEscape(snap)), nil, nil)
}

func (c *Client) Resize(ctx context.Context, name string, req service.ResizeRequest) (service.VM, error) {
	return call[service.VM](ctx, c, http.MethodPost, vmPath(name, "resize"), req)
}

func (c *Client) Rename(ctx context.Context, name, newName string) (service.VM, error) {
	return call[service.VM](ctx, c, http.MethodPost, vmPath(name, "rename"), RenameRequest{Name: newName})
}

func (c *Client) Copy(ctx context.Context, name string, req service.CopyRequest, p service.Progress) (service.VM, error) {
	var v service.VM
	return v, c.long(ctx, vmPath(name, "copy"), req, p, &v)
}

// Fork clones a running VM with its memory (POST /v1/vms/{name}/fork).
func (c *Client) Fork(ctx context.Context, name string, req service.ForkRequest, p service.Progress) (service.VM, error) {
	var v service.VM
	return v, c.long(ctx, vmPath(name, "fork"), req, p, &v)
}

// SSHKeyChallenge asks for a nonce to sign with a key to add.
func (c *Client) SSHKeyChallenge(ctx context.Context) (service.KeyChallenge, error) {
	return call[service.KeyChallenge](ctx, c, http.MethodPost, "/v1/ssh-keys/challenge", nil)
}

// AddSSHKey registers a key with its proof of possession.
func (c *Client) AddSSHKey(ctx context.Context, p service.KeyProof) (service.SSHKey, error) {
	return call[service.SSHKey](ctx, c, http.MethodPost, "/v1/ssh-keys", p)
}

func (c *Client) ListSSHKeys(ctx context.Context) ([]service.SSHKey, error) {
	return call[[]service.SSHKey](ctx, c, http.MethodGet, "/v1/ssh-keys", nil)
}

func (c *Client) RemoveSSHKey(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/ssh-keys/"+url.PathEscape(id), nil, nil)
}

// AddUser creates a user (admins only).
func (c *Client) AddUser(ctx context.Context, name string, admin bool, sshKey service.KeyProof) (service.User, error) {
	req := UserRequest{Name: name, Admin: admin}
	if sshKey.PublicKey != "" {
		req.SSHKey = &sshKey
	}
	return call[service.User](ctx, c, http.MethodPost, "/v1/users", req)
}

// ListUsers lists users (admins only).
func (c *Client) ListUsers(ctx context.Context) ([]service.User, error) {
	return call[[]service.User](ctx, c, http.MethodGet, "/v1/users", nil)
}

// RemoveUser deletes a user who owns no VMs (admins only).
func (c *Client) RemoveUser(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/users/"+url.PathEscape(name), nil, nil)
}

// SetQuota replaces a user's quota (admins only).
func (c *Client) SetQuota(ctx context.Context, name string, q service.Quota) (service.User, error) {
	return call[service.User](ctx, c, http.MethodPut, "/v1/users/"+url.PathEscape(name)+"/quota", q)
}

// CreateToken makes a token for user ("": the caller); expires 0: never.
func (c *Client) CreateToken(ctx context.Context, user, name string, expires time.Duration) (service.NewToken, error) {
	var t service.NewToken
	secs := int64(expires / time.Second)
	if expires > 0 && secs == 0 {
		secs = 1
	}
	return t, c.do(ctx, http.MethodPost, "/v1/tokens", TokenRequest{User: user, Name: name, ExpiresInSeconds: secs}, &t)
}

// ListTokens lists tokens (user "": the caller's, or everyone's for an admin).
func (c *Client) ListTokens(ctx context.Context, user string) ([]service.Token, error) {
	var ts []service.Token
	p := "/v1/tokens"
	if user != "" {
		p += "?user=" + url.QueryEscape(user)
	}
	return ts, c.do(ctx, http.MethodGet, p, nil, &ts)
}

// RevokeToken deletes a token by ID.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/tokens/"+url.PathEscape(id), nil, nil)
}

// Close releases idle connections.
func (c *Client) Close() error {
	c.hc.CloseIdleConnections()
	return nil
}

// Exec runs a command in the guest over the exec upgrade and returns its
// exit status, as the in-process backend does.
func (c *Client) Exec(ctx context.Context, name string, req service.ExecRequest) (int, error) {
	spec := ExecSpec{Command: req.Command, Argv: req.Argv, Env: req.Env, TTY: req.TTY, Term: req.Term, Width: req.Width, Height: req.Height}
	hreq, err := c.newRequest(ctx, http.MethodPost, vmPath(name, "exec"), spec)
	if err != nil {
		return -1, err
	}
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", UpgradeProto)
	resp, err := c.send(hreq)
	if err != nil {
		return -1, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer resp.Body.Close()
		if resp.StatusCode < 300 {
			return -1, fmt.Errorf("minions api: exec: server answered %s, not an upgrade", resp.Status)
		}
		return -1, responseError(resp)
	}
	conn, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return -1, errors.New("minions api: exec: upgraded body is not writable")
	}
	defer conn.Close()
	fw := &frameWriter{w: conn}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			conn.Close()
		case <-done:
		}
	}()
	go sendInput(fw, req, done)

	stdout, stderr := req.Stdout, req.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		typ, p, err := readFrame(conn)
		if err != nil {
			if ctx.Err() != nil {
				return -1, errs.New(errs.Unavailable, "exec: %w", ctx.Err())
			}
			return -1, errs.New(errs.Unavailable, "exec: connection to the api lost: %w", err)
		}
		switch typ {
		case frameStdout:
			stdout.Write(p)
		case frameStderr:
			stderr.Write(p)
		case frameExit:
			if len(p) != 4 {
				return -1, errors.New("exec: malformed exit frame")
			}
			return int(int32(binary.BigEndian.Uint32(p))), nil
		case frameError:
			var e Error
			if err := json.Unmarshal(p, &e); err != nil {
				return -1, fmt.Errorf("exec: malformed error frame: %w", err)
			}
			return -1, e.asError()
		}
	}
}

// sendInput forwards stdin, window changes and signals until done.
func sendInput(fw *frameWriter, req service.ExecRequest, done <-chan struct{}) {
	go func() {
		if req.Stdin != nil {
			buf := make([]byte, 32<<10)
			for {
				n, err := req.Stdin.Read(buf)
				if n > 0 {
					if fw.write(frameStdin, buf[:n]) != nil {
						return
					}
				}
				if err != nil {
					break
				}
			}
		}
		fw.write(frameStdinEOF, nil)
	}()
	resize, signals := req.Resize, req.Signals
	for resize != nil || signals != nil {
		select {
		case <-done:
			return
		case ws, ok := <-resize:
			if !ok {
				resize = nil
				continue
			}
			var p [8]byte
			binary.BigEndian.PutUint32(p[:], uint32(ws.Width))
			binary.BigEndian.PutUint32(p[4:], uint32(ws.Height))
			fw.write(frameResize, p[:])
		case sig, ok := <-signals:
			if !ok {
				signals = nil
				continue
			}
			fw.write(frameSignal, []byte(sig))
		}
	}
}
