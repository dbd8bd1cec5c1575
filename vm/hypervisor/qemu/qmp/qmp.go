package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/sys/unix"
)

// Greeting is what QEMU sends when a client connects.
type Greeting struct {
	Version struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	} `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// VersionString is "major.minor.micro".
func (g Greeting) VersionString() string {
	v := g.Version.QEMU
	return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
}

// Event is an asynchronous QMP event such as SHUTDOWN or STOP.
type Event struct {
	Name string
	Data json.RawMessage
	Time time.Time
}

// Error is an error reply from QEMU (class such as "GenericError" and a
// human-readable description).
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "qmp " + e.Class + ": " + e.Desc }

// EventBuffer is how many undelivered events a Client keeps; further events
// are dropped until the reader catches up.
const EventBuffer = 64

// Client is a QMP connection in command mode.
type Client struct {
	conn     net.Conn
	greeting Greeting

	writeMu sync.Mutex
	nextID  atomic.Uint64

	mu      sync.Mutex
	pending map[string]chan message
	readErr error

	events  chan Event
	dropped atomic.Uint64
	done    chan struct{}
}

type message struct {
	QMP       *Greeting       `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	ID        json.RawMessage `json:"id"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        string `json:"id"`
}

// Dial connects to the QMP socket at path and negotiates capabilities. A
// socket that does not answer is an errs.Unavailable.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, errs.New(errs.Unavailable, "qmp dial %s: %w", path, err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient reads the greeting from conn and enters command mode. The
// Client owns conn from then on, also on error.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:    conn,
		pending: make(map[string]chan message),
		events:  make(chan Event, EventBuffer),
		done:    make(chan struct{}),
	}
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(10 * time.Second)
	}
	_ = conn.SetReadDeadline(dl)
	dec := json.NewDecoder(bufio.NewReader(conn))
	var g message
	if err := dec.Decode(&g); err != nil {
		conn.Close()
		return nil, errs.New(errs.Unavailable, "qmp greeting: %w", err)
	}
	if g.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("qmp greeting: unexpected first message (no QMP key)")
	}
	c.greeting = *g.QMP
	_ = conn.SetReadDeadline(time.Time{})
	go c.read(dec)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp negotiate capabilities: %w", err)
	}
	return c, nil
}

// Greeting returns the server's greeting.
func (c *Client) Greeting() Greeting { return c.greeting }

// Events delivers asynchronous events in order. At most EventBuffer events
// are held; when nobody reads, newer events are dropped (see Dropped). The
// channel is closed when the connection ends.
func (c *Client) Events() <-chan Event { return c.events }

// Dropped is the number of events dropped because the buffer was full.
func (c *Client) Dropped() uint64 { return c.dropped.Load() }

// Done is closed when the connection has ended (closed by either side).
func (c *Client) Done() <-chan struct{} { return c.done }

// Close closes the connection. Pending Executes return errs.Unavailable.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) read(dec *json.Decoder) {
	var err error
	for {
		var m message
		if err = dec.Decode(&m); err != nil {
			break
		}
		switch {
		case m.Event != "":
			ev := Event{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			select {
			case c.events <- ev:
			default:
				c.dropped.Add(1)
			}
		case len(m.ID) > 0:
			var id string
			if json.Unmarshal(m.ID, &id) != nil {
				continue // not one of ours
			}
			c.mu.Lock()
			ch := c.pending[id]
			delete(c.pending, id)
			c.mu.Unlock()
			if ch != nil {
				ch <- m
			}
		}
	}
	c.mu.Lock()
	c.readErr = err
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
	close(c.events)
	close(c.done)
}

// Execute runs command with args (nil for none; any value that marshals to
// a JSON object) and decodes the reply's return value into result (nil to
// discard it). A QEMU error reply is returned as *Error; a broken connection
// as errs.Unavailable; ctx ending stops the wait (the reply is then dropped).
func (c *Client) Execute(ctx context.Context, command string, args any, result any) error {
	return c.execute(ctx, command, args, result, nil)
}

// SendFile hands QEMU a duplicate of f's descriptor under name (QMP getfd,
// the descriptor travels as SCM_RIGHTS), for arguments such as a migration
// URI "fd:<name>". The connection must be a unix socket. The caller keeps
// f; QEMU closes its copy when the command using it ends.
func (c *Client) SendFile(ctx context.Context, name string, f *os.File) error {
	return c.execute(ctx, "getfd", map[string]any{"fdname": name}, nil, f)
}

// ExecuteFile is Execute with a duplicate of f's descriptor passed along
// (SCM_RIGHTS), for commands that take one, such as add-fd.
func (c *Client) ExecuteFile(ctx context.Context, command string, args any, result any, f *os.File) error {
	return c.execute(ctx, command, args, result, f)
}

func (c *Client) execute(ctx context.Context, command string, args any, result any, f *os.File) error {
	id := "m" + strconv.FormatUint(c.nextID.Add(1), 10)
	b, err := json.Marshal(request{Execute: command, Arguments: args, ID: id})
	if err != nil {
		return fmt.Errorf("qmp %s: encode arguments: %w", command, err)
	}
	ch := make(chan message, 1)
	c.mu.Lock()
	if c.readErr != nil || isClosed(c.done) {
		c.mu.Unlock()
		return errs.New(errs.Unavailable, "qmp %s: connection closed", command)
	}
	c.pending[id] = ch
	c.mu.Unlock()

	c.writeMu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
	}
	if f == nil {
		_, err = c.conn.Write(append(b, '\n'))
	} else if uc, ok := c.conn.(*net.UnixConn); !ok {
		err = fmt.Errorf("passing a file needs a unix socket, not %T", c.conn)
	} else {
		_, _, err = uc.WriteMsgUnix(append(b, '\n'), unix.UnixRights(int(f.Fd())), nil)
	}
	_ = c.conn.SetWriteDeadline(time.Time{})
	c.writeMu.Unlock()
	if err != nil {
		c.forget(id)
		return errs.New(errs.Unavailable, "qmp %s: write: %w", command, err)
	}

	select {
	case m, ok := <-ch:
		if !ok {
			return errs.New(errs.Unavailable, "qmp %s: connection closed before the reply", command)
		}
		if m.Error != nil {
			return fmt.Errorf("qmp %s: %w", command, m.Error)
		}
		if result != nil && len(m.Return) > 0 {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		return errs.New(errs.Unavailable, "qmp %s: %w", command, ctx.Err())
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func isClosed(ch chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
