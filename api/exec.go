package api

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// Exec protocol.
//
// The client sends POST /v1/vms/{name}/exec with `Connection: Upgrade`,
// `Upgrade: minions-exec` and an ExecSpec as JSON body. Errors found before
// the command starts (authentication, unknown VM, VM not running) are
// ordinary JSON error responses. Otherwise the server answers
// `101 Switching Protocols` and both sides exchange frames:
//
//	type (1 byte) | length (4 bytes, big endian) | payload (length bytes)
//
// Client to server: stdin data 'i', end of stdin 'e' (empty), terminal
// resize 'r' (width and height as 2 big-endian uint32), signal 's' (its
// name: "INT", "TERM", ...). Server to client: stdout 'o', stderr 'x',
// exit 'q' (the exit status as a big-endian int32; the last frame), error
// '!' (an Error as JSON; the last frame). When the client's connection
// ends the command is killed.
const (
	UpgradeProto = "minions-exec"

	frameStdin    byte = 'i'
	frameStdinEOF byte = 'e'
	frameResize   byte = 'r'
	frameSignal   byte = 's'
	frameStdout   byte = 'o'
	frameStderr   byte = 'x'
	frameExit     byte = 'q'
	frameError    byte = '!'

	maxFrame = 1 << 20

	// stdinChunk and stdinQueue bound the client stdin the server holds
	// for a command that is not reading it: stdinQueue chunks of up to
	// stdinChunk bytes (256 KiB), plus the frame being queued. Beyond that
	// the server stops reading the connection and TCP pushes back on the
	// client.
	stdinChunk = 32 << 10
	stdinQueue = 8
)

// ExecSpec is the body of an exec request.
type ExecSpec struct {
	// Command is run with /bin/sh -c; Argv, when set, replaces it with its
	// shell-quoted words. Both empty with TTY: a login shell.
	Command string            `json:"command,omitempty"`
	Argv    []string          `json:"argv,omitempty"`
	Env     map[string]string `json:"env,omitempty"`
	TTY     bool              `json:"tty,omitempty"`
	Term    string            `json:"term,omitempty"`
	Width   int               `json:"width,omitempty"`
	Height  int               `json:"height,omitempty"`
}

// Validate bounds the spec.
func (s ExecSpec) Validate() error {
	if s.Width < 0 || s.Height < 0 || s.Width > 10000 || s.Height > 10000 {
		return errs.New(errs.InvalidArgument, "terminal size %dx%d out of range", s.Width, s.Height)
	}
	if s.Command == "" && len(s.Argv) == 0 && !s.TTY {
		return errs.New(errs.InvalidArgument, "exec: a command is required")
	}
	return nil
}

func readFrame(r io.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n > maxFrame {
		return 0, nil, fmt.Errorf("frame of %d bytes exceeds %d", n, maxFrame)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return 0, nil, err
	}
	return hdr[0], b, nil
}

// frameWriter serialises frames from several goroutines onto one stream.
type frameWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (f *frameWriter) write(typ byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	// An empty payload is one empty frame; a large one is split.
	for {
		chunk := p
		if len(chunk) > maxFrame {
			chunk = p[:maxFrame]
		}
		var hdr [5]byte
		hdr[0] = typ
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(chunk)))
		if _, err := f.w.Write(append(hdr[:], chunk...)); err != nil {
			return err
		}
		p = p[len(chunk):]
		if len(p) == 0 {
			return nil
		}
	}
}

// frameStream is an io.Writer that sends each write as frames of typ.
type frameStream struct {
	f   *frameWriter
	typ byte
}

func (s frameStream) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := s.f.write(s.typ, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func upgradeRequested(r *http.Request, proto string) bool {
	return headerHas(r.Header, "Connection", "upgrade") && strings.EqualFold(r.Header.Get("Upgrade"), proto)
}

// switchProtocols hijacks w's connection, lifts its deadlines and answers
// 101 Switching Protocols to proto. On failure it has answered with the
// error (what names the route) or the connection is gone, and ok is false;
// otherwise the caller owns conn and must close it.
func switchProtocols(w http.ResponseWriter, what, proto string) (conn net.Conn, brw *bufio.ReadWriter, ok bool) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeError(w, fmt.Errorf("%s: hijack connection: %w", what, err))
		return nil, nil, false
	}
	conn.SetDeadline(time.Time{})
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", proto)
	if err := brw.Flush(); err != nil {
		conn.Close()
		return nil, nil, false
	}
	return conn, brw, true
}

func headerHas(h http.Header, key, token string) bool {
	for _, v := range h.Values(key) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func (h *handler) serveExec(w http.ResponseWriter, r *http.Request, c service.Caller) {
	if !upgradeRequested(r, UpgradeProto) {
		writeError(w, errs.New(errs.InvalidArgument, "exec needs `Connection: Upgrade` and `Upgrade: %s`", UpgradeProto))
		return
	}
	var spec ExecSpec
	if err := decode(r, &spec); err != nil {
		writeError(w, err)
		return
	}
	if err := spec.Validate(); err != nil {
		writeError(w, err)
		return
	}
	dctx, cancel := context.WithTimeout(r.Context(), h.cfg.RequestTimeout)
	guest, err := h.svc.OpenGuest(dctx, c, r.PathValue("name"))
	cancel()
	if err != nil {
		writeError(w, err)
		return
	}
	defer guest.Close()
	conn, brw, ok := switchProtocols(w, "exec", UpgradeProto)
	if !ok {
		return
	}
	defer conn.Close()
	fw := &frameWriter{w: conn}
	// The command outlives the request's context (the connection is
	// hijacked) but not the credential it was started with.
	ctx, stopCause := context.WithCancelCause(context.WithoutCancel(r.Context()))
	stop := func() { stopCause(context.Canceled) }
	defer stop()
	unbind := context.AfterFunc(r.Context(), func() {
		if cause := context.Cause(r.Context()); errors.Is(cause, errs.Unauthenticated) {
			stopCause(cause)
		}
	})
	defer unbind()

	stdinR, stdinW := io.Pipe()
	defer stdinR.Close()
	resize := make(chan service.WindowSize, 4)
	signals := make(chan string, 8)
	go h.execInput(ctx, stop, brw.Reader, stdinW, resize, signals)

	code, err := guest.Exec(ctx, service.ExecRequest{
		Command: spec.Command, Argv: spec.Argv, Env: spec.Env,
		Stdin: stdinR, Stdout: frameStream{fw, frameStdout}, Stderr: frameStream{fw, frameStderr},
		TTY: spec.TTY, Term: spec.Term, Width: spec.Width, Height: spec.Height,
		Resize: resize, Signals: signals,
	})
	if cause := context.Cause(ctx); errors.Is(cause, errs.Unauthenticated) {
		err = cause
	}
	if err != nil {
		b, _ := json.Marshal(errorOf(err))
		fw.write(frameError, b)
		return
	}
	var st [4]byte
	binary.BigEndian.PutUint32(st[:], uint32(int32(code)))
	fw.write(frameExit, st[:])
}

// execInput reads the client's frames until its connection ends (which
// cancels the command). Stdin is written from its own goroutine through a
// bounded queue (stdinQueue), so a command that does not read its input
// holds up signals and resizes only once the client has sent more than the
// queue holds, and a client cannot make the server buffer without bound.
func (h *handler) execInput(ctx context.Context, stop func(), r *bufio.Reader, stdin *io.PipeWriter,
	resize chan<- service.WindowSize, signals chan<- string) {
	data := make(chan []byte, stdinQueue)
	go func() {
		for b := range data {
			if _, err := stdin.Write(b); err != nil {
				break
			}
		}
		stdin.Close()
		for range data {
		}
	}()
	eof := false
	closeStdin := func() {
		if !eof {
			eof = true
			close(data)
		}
	}
	defer closeStdin()
	for {
		typ, p, err := readFrame(r)
		if err != nil {
			stop()
			return
		}
		switch typ {
		case frameStdin:
			for !eof && len(p) > 0 {
				n := min(len(p), stdinChunk)
				select {
				case data <- p[:n:n]:
				case <-ctx.Done():
					return
				}
				p = p[n:]
			}
		case frameStdinEOF:
			closeStdin()
		case frameResize:
			if len(p) == 8 {
				ws := service.WindowSize{Width: int(binary.BigEndian.Uint32(p)), Height: int(binary.BigEndian.Uint32(p[4:]))}
				if ws.Width > 0 && ws.Height > 0 && ws.Width <= 10000 && ws.Height <= 10000 {
					select {
					case resize <- ws:
					default:
					}
				}
			}
		case frameSignal:
			if sig := string(p); validSignal(sig) {
				select {
				case signals <- sig:
				default:
				}
			}
		default:
			h.log.Warn("exec: unknown frame", "type", typ)
		}
	}
}

// validSignal accepts the signal names SSH defines (RFC 4254 6.10).
func validSignal(s string) bool {
	switch s {
	case "ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT", "SEGV", "TERM", "USR1", "USR2":
		return true
	}
	return false
}

// serveLogs copies a VM's console log; with ?follow=true it keeps sending
// what is appended until the client goes away or the VM is destroyed.
func (h *handler) serveLogs(w http.ResponseWriter, r *http.Request, c service.Caller) {
	follow := false
	if v := r.URL.Query().Get("follow"); v != "" {
		var err error
		if follow, err = strconv.ParseBool(v); err != nil {
			writeError(w, errs.New(errs.InvalidArgument, "follow=%q: want true or false", v))
			return
		}
	}
	ctx := r.Context()
	if _, err := h.svc.ConsoleLog(ctx, c, r.PathValue("name")); err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	rc.Flush()
	h.svc.CopyConsole(ctx, c, r.PathValue("name"), follow, flushWriter{w, rc})
}

// flushWriter sends what is written at once (for following logs).
type flushWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}
