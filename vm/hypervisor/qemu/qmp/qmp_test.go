package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}`

// fakeServer is a QMP server on a unix socket. handle is called for every
// command after qmp_capabilities and writes whatever it wants.
type fakeServer struct {
	path     string
	greeting string
	handle   func(w *json.Encoder, req map[string]any)
	mu       sync.Mutex
	commands []string
}

func startServer(t *testing.T, s *fakeServer) string {
	t.Helper()
	s.path = filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go s.serve(conn)
		}
	}()
	return s.path
}

func (s *fakeServer) serve(conn net.Conn) {
	defer conn.Close()
	g := s.greeting
	if g == "" {
		g = greeting
	}
	fmt.Fprintln(conn, g)
	enc := json.NewEncoder(conn)
	sc := bufio.NewScanner(conn)
	negotiated := false
	for sc.Scan() {
		var req map[string]any
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			enc.Encode(map[string]any{"error": map[string]any{"class": "GenericError", "desc": "JSON parse error"}})
			continue
		}
		cmd, _ := req["execute"].(string)
		s.mu.Lock()
		s.commands = append(s.commands, cmd)
		s.mu.Unlock()
		if cmd == "qmp_capabilities" {
			negotiated = true
			enc.Encode(map[string]any{"return": map[string]any{}, "id": req["id"]})
			continue
		}
		if !negotiated {
			enc.Encode(map[string]any{"error": map[string]any{"class": "CommandNotFound", "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": req["id"]})
			continue
		}
		if cmd == "hangup" {
			return
		}
		s.handle(enc, req)
	}
}

func defaultHandler(enc *json.Encoder, req map[string]any) {
	switch req["execute"] {
	case "query-status":
		enc.Encode(map[string]any{"event": "RESUME", "data": map[string]any{}, "timestamp": map[string]any{"seconds": 1700000000, "microseconds": 5}})
		enc.Encode(map[string]any{"return": map[string]any{"status": "running", "running": true}, "id": req["id"]})
	case "echo":
		enc.Encode(map[string]any{"return": req["arguments"], "id": req["id"]})
	case "stop":
		enc.Encode(map[string]any{"return": map[string]any{}, "id": req["id"]})
		enc.Encode(map[string]any{"event": "STOP", "timestamp": map[string]any{"seconds": 1, "microseconds": 0}})
	case "never":
	default:
		enc.Encode(map[string]any{"error": map[string]any{"class": "CommandNotFound", "desc": fmt.Sprintf("The command %v has not been found", req["execute"])}, "id": req["id"]})
	}
}

func dial(t *testing.T, s *fakeServer) *Client {
	t.Helper()
	if s.handle == nil {
		s.handle = defaultHandler
	}
	path := startServer(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestExecute(t *testing.T) {
	s := &fakeServer{}
	c := dial(t, s)
	if got := c.Greeting().VersionString(); got != "7.2.22" {
		t.Errorf("version = %q", got)
	}
	ctx := context.Background()
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil {
		t.Fatal(err)
	}
	if st.Status != "running" || !st.Running {
		t.Errorf("status = %+v", st)
	}
	ev := <-c.Events()
	if ev.Name != "RESUME" || ev.Time.Unix() != 1700000000 {
		t.Errorf("event = %+v", ev)
	}

	var echoed map[string]string
	if err := c.Execute(ctx, "echo", map[string]string{"uri": "exec:cat > x"}, &echoed); err != nil {
		t.Fatal(err)
	}
	if echoed["uri"] != "exec:cat > x" {
		t.Errorf("echo = %v", echoed)
	}

	err := c.Execute(ctx, "nosuch", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("err = %v, want a CommandNotFound *Error", err)
	}

	// Reply first, then the event: both arrive.
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-c.Events():
		if ev.Name != "STOP" {
			t.Errorf("event = %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no STOP event")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.commands[0] != "qmp_capabilities" {
		t.Errorf("first command = %q", s.commands[0])
	}
}

func TestConcurrentOutOfOrder(t *testing.T) {
	// The server answers pairs of requests in reverse order.
	var mu sync.Mutex
	var held []map[string]any
	s := &fakeServer{handle: func(enc *json.Encoder, req map[string]any) {
		mu.Lock()
		defer mu.Unlock()
		held = append(held, req)
		if len(held) < 2 {
			return
		}
		for i := len(held) - 1; i >= 0; i-- {
			enc.Encode(map[string]any{"return": held[i]["arguments"], "id": held[i]["id"]})
		}
		held = nil
	}}
	c := dial(t, s)
	var wg sync.WaitGroup
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var got map[string]int
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.Execute(ctx, "echo", map[string]int{"n": i}, &got); err != nil {
				t.Error(err)
				return
			}
			if got["n"] != i {
				t.Errorf("request %d got reply %v", i, got)
			}
		}()
	}
	wg.Wait()
}

func TestFailures(t *testing.T) {
	t.Run("timeout", func(t *testing.T) {
		c := dial(t, &fakeServer{})
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		err := c.Execute(ctx, "never", nil, nil)
		if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errs.Unavailable) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("server hangs up", func(t *testing.T) {
		c := dial(t, &fakeServer{})
		err := c.Execute(context.Background(), "hangup", nil, nil)
		if !errors.Is(err, errs.Unavailable) {
			t.Fatalf("err = %v, want Unavailable", err)
		}
		<-c.Done()
		if _, ok := <-c.Events(); ok {
			t.Fatal("events channel not closed")
		}
		if err := c.Execute(context.Background(), "query-status", nil, nil); !errors.Is(err, errs.Unavailable) {
			t.Fatalf("after hangup: err = %v", err)
		}
	})
	t.Run("bad greeting", func(t *testing.T) {
		s := &fakeServer{greeting: `{"hello": 1}`, handle: defaultHandler}
		path := startServer(t, s)
		if _, err := Dial(context.Background(), path); err == nil {
			t.Fatal("no error for a bad greeting")
		}
	})
	t.Run("no socket", func(t *testing.T) {
		_, err := Dial(context.Background(), filepath.Join(t.TempDir(), "none.sock"))
		if !errors.Is(err, errs.Unavailable) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("event overflow drops", func(t *testing.T) {
		s := &fakeServer{handle: func(enc *json.Encoder, req map[string]any) {
			for range EventBuffer + 5 {
				enc.Encode(map[string]any{"event": "X"})
			}
			enc.Encode(map[string]any{"return": map[string]any{}, "id": req["id"]})
		}}
		c := dial(t, s)
		if err := c.Execute(context.Background(), "spam", nil, nil); err != nil {
			t.Fatal(err)
		}
		if c.Dropped() != 5 {
			t.Fatalf("dropped = %d, want 5", c.Dropped())
		}
	})
}
