package fabric

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/minionsdev/minions/fabric/nodeauth"
	"github.com/minionsdev/minions/internal/errs"
)

// NewNodeKey makes a node's key pair: the seed stays on the node (its
// credential), the public key goes to the control plane at join.
func NewNodeKey() (seed, pub string, err error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return "", "", err
	}
	s, err := kp.Seed()
	if err != nil {
		return "", "", err
	}
	p, err := kp.PublicKey()
	return string(s), p, err
}

// ValidPublicKey reports whether pub is an NKey user public key.
func ValidPublicKey(pub string) bool { return nodeauth.ValidPublicKey(pub) }

// Conn is a connection to the fabric. It reconnects by itself (forever)
// and is safe for concurrent use.
type Conn struct {
	nc     *nats.Conn
	asyncE chan error
	local  atomic.Value // string: the local IP of the latest TCP connection
}

// Msg is a received message; Respond answers a request.
type Msg struct {
	Subject string
	Data    []byte
	m       *nats.Msg
}

// Respond replies to the request m was (an error if it was not one).
func (m Msg) Respond(data []byte) error { return m.m.Respond(data) }

// Option tunes a connection.
type Option = nats.Option

// ConnectNode connects node id with its seed to url (nats://host:port,
// a comma-separated list for a cluster). Errors: errs.InvalidArgument for a
// bad id or seed, errs.Unauthenticated when the server refuses the key,
// errs.Unavailable when it cannot be reached.
func ConnectNode(url, id, seed string, opts ...Option) (*Conn, error) {
	if !ValidID(id) {
		return nil, errs.New(errs.InvalidArgument, "node id %q: want 1-64 of a-z 0-9 _ -", id)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(seed)))
	if err != nil {
		return nil, errs.New(errs.InvalidArgument, "node credential: %v", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, errs.New(errs.InvalidArgument, "node credential: %v", err)
	}
	o := append([]Option{nats.Name("minions-node-" + id), nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(inbox(id))}, opts...)
	return connect(url, o...)
}

// ConnectControl connects the control plane to an external NATS server
// or cluster at url: credentials in the URL (user:password) or an NKey
// given with WithSeed. The external servers' configuration must give the
// nodes the permissions of NodePermissions (ServerUsers renders them).
func ConnectControl(url string, opts ...Option) (*Conn, error) {
	return connect(url, append([]Option{nats.Name("minions-control")}, opts...)...)
}

func newConn(nc *nats.Conn) *Conn {
	c := &Conn{nc: nc, asyncE: make(chan error, 16)}
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case c.asyncE <- err:
		default:
		}
	})
	return c
}

func connect(url string, opts ...Option) (*Conn, error) {
	c := &Conn{asyncE: make(chan error, 16)}
	opts = append([]Option{
		nats.SetCustomDialer(localAddrDialer{c: c, d: &net.Dialer{Timeout: nats.DefaultTimeout}}),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case c.asyncE <- err:
			default:
			}
		}),
	}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		if errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(err.Error()), "authorization") {
			return nil, errs.New(errs.Unauthenticated, "nats %s refused the credential: %v", url, err)
		}
		return nil, errs.New(errs.Unavailable, "connect to nats %s: %v", url, err)
	}
	c.nc = nc
	return c, nil
}

// localAddrDialer dials the fabric and records the local address of each
// connection it makes (LocalAddr).
type localAddrDialer struct {
	c *Conn
	d *net.Dialer
}

func (l localAddrDialer) Dial(network, address string) (net.Conn, error) {
	nc, err := l.d.Dial(network, address)
	if err == nil {
		if a, ok := nc.LocalAddr().(*net.TCPAddr); ok {
			l.c.local.Store(a.IP.String())
		}
	}
	return nc, err
}

// LocalAddr is the IP address this connection reaches the fabric from
// (the local end of its latest TCP connection: after a reconnect, the
// new one's), "" for an in-process connection. It is where another host
// on the fabric's network can reach this one.
func (c *Conn) LocalAddr() string {
	s, _ := c.local.Load().(string)
	return s
}

// Errors delivers asynchronous errors the server sent (a permission
// violation, say); when nobody reads, they are dropped.
func (c *Conn) Errors() <-chan error { return c.asyncE }

// Publish sends data on subject.
func (c *Conn) Publish(subject string, data []byte) error { return c.nc.Publish(subject, data) }

// Subscribe calls fn for every message on subject (wildcards allowed), one
// at a time, until unsubscribe is called.
func (c *Conn) Subscribe(subject string, fn func(Msg)) (unsubscribe func() error, err error) {
	sub, err := c.nc.Subscribe(subject, func(m *nats.Msg) { fn(Msg{Subject: m.Subject, Data: m.Data, m: m}) })
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject, err)
	}
	return sub.Unsubscribe, nil
}

// Request sends data on subject and waits for one reply, bounded by ctx.
// No one listening is errs.Unavailable.
func (c *Conn) Request(ctx context.Context, subject string, data []byte) ([]byte, error) {
	m, err := c.nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, errs.New(errs.Unavailable, "nobody serves %s", subject)
		}
		return nil, fmt.Errorf("request %s: %w", subject, err)
	}
	return m.Data, nil
}

// Flush waits until the server has processed everything sent so far
// (and answered with any error about it), bounded by ctx.
func (c *Conn) Flush(ctx context.Context) error { return c.nc.FlushWithContext(ctx) }

// Connected reports whether the connection is up now.
func (c *Conn) Connected() bool { return c.nc.IsConnected() }

// Close closes the connection.
func (c *Conn) Close() { c.nc.Close() }

// NoReconnect makes a connection give up instead of retrying (tests,
// one-shot tools).
func NoReconnect() Option { return nats.NoReconnect() }

// WithSeed authenticates with the NKey of seed (an external cluster's
// control-plane user).
func WithSeed(seed string) (Option, error) {
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(seed)))
	if err != nil {
		return nil, errs.New(errs.InvalidArgument, "nats credential: %v", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, errs.New(errs.InvalidArgument, "nats credential: %v", err)
	}
	return nats.Nkey(pub, kp.Sign), nil
}

// PublicKeyOf returns the public key of a seed.
func PublicKeyOf(seed string) (string, error) { return nodeauth.PublicKeyOf(seed) }
