package gateway

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Context keys of the times a connection was accepted and authenticated
// (time.Time values in the connection's ssh.Context).
type (
	acceptedKey struct{}
	authedKey   struct{}
)

// sessionTimes records when the steps of one `ssh vm@host` session
// happened, for the "vm session ended" log line: what a user waits for
// between connecting and the command's exit, step by step. Safe for
// concurrent use.
type sessionTimes struct {
	mu sync.Mutex
	// accepted and authed are the connection's (the same for every
	// session on it); the others this channel's.
	accepted, authed time.Time
	channel          time.Time // the session channel was requested
	agent            time.Time // the VM's agent connection was lent
	opened           time.Time // the agent accepted its session channel
	started          time.Time // the agent answered shell/exec/subsystem
	exited           time.Time // the agent sent the exit status
}

// newSessionTimes starts the record of a session channel of the
// connection behind ctx.
func newSessionTimes(ctx context.Context) *sessionTimes {
	t := &sessionTimes{channel: time.Now()}
	t.accepted, _ = ctx.Value(acceptedKey{}).(time.Time)
	t.authed, _ = ctx.Value(authedKey{}).(time.Time)
	return t
}

// mark sets *at to now unless it is set already; t may be nil.
func (t *sessionTimes) mark(at func(*sessionTimes) *time.Time) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if p := at(t); p.IsZero() {
		*p = time.Now()
	}
}

// attrs are the steps' durations in milliseconds (fractional), each from
// the step before: login (accept to authenticated), channel (authenticated
// to the session channel's request; the client's own pace), agent (the
// agent connection lent: pooled or dialed), open (the agent's session
// channel), start (the user's requests up to the agent's answer to
// shell/exec), run (to the exit status) and close (to the end). A step
// that did not happen is left out, and so is the next one's.
func (t *sessionTimes) attrs(end time.Time) slog.Attr {
	if t == nil {
		return slog.Attr{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	steps := []struct {
		name string
		at   time.Time
	}{{"accept", t.accepted}, {"login", t.authed}, {"channel", t.channel}, {"agent", t.agent},
		{"open", t.opened}, {"start", t.started}, {"run", t.exited}, {"close", end}}
	var out []any
	for i := 1; i < len(steps); i++ {
		a, b := steps[i-1].at, steps[i].at
		if a.IsZero() || b.IsZero() {
			continue
		}
		out = append(out, slog.Float64(steps[i].name, float64(b.Sub(a).Microseconds())/1000))
	}
	return slog.Group("ms", out...)
}
