package fabric

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/minionsdev/minions/fabric/nodeauth"
	"github.com/minionsdev/minions/internal/errs"
)

// Subject roots; see the package doc.
const (
	nodeRoot   = "minions.node."
	statusRoot = "minions.status."
	inboxRoot  = "minions.inbox."
	// AdminSubjects are the control plane's own subjects (no node may
	// touch them).
	AdminSubjects = "minions.admin.>"
	// StatusSubjects matches every node's heartbeat subject.
	StatusSubjects = "minions.status.*"
)

// NodeSubject is the root of the subjects node id serves:
// NodeSubject(id)+".ping", say.
func NodeSubject(id string) string { return nodeRoot + id }

// StatusSubject is where node id publishes its heartbeats.
func StatusSubject(id string) string { return statusRoot + id }

// NodeOfStatus returns the node ID of a StatusSubject, "" if subject is
// not one.
func NodeOfStatus(subject string) string {
	if len(subject) <= len(statusRoot) || subject[:len(statusRoot)] != statusRoot {
		return ""
	}
	id := subject[len(statusRoot):]
	if !ValidID(id) {
		return ""
	}
	return id
}

// inbox is node id's reply-inbox prefix (its own, so no node may read
// another's replies).
func inbox(id string) string { return inboxRoot + id }

var idRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z0-9_-]{1,64}$`) })

// ValidID reports whether id may name a node in subjects: 1-64 of
// [a-z0-9_-] (no dots, no wildcards).
func ValidID(id string) bool { return idRE().MatchString(id) }

// NodePermissions are what node id may do: subscribe to its own request
// subjects and inbox, publish its own status, and answer the requests it
// received (one reply each, within a minute). Nothing else: not another
// node's subjects, not the admin subjects, not the JetStream API.
func NodePermissions(id string) *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: []string{StatusSubject(id), StatusSubject(id) + ".>"}},
		Subscribe: &server.SubjectPermission{Allow: []string{NodeSubject(id) + ".>", inbox(id) + ".>"}},
		Response:  &server.ResponsePermission{MaxMsgs: 1, Expires: time.Minute},
	}
}

// NkeyUsers are the users an external nats-server needs: the control
// plane's key with no restrictions, and each node's key (node ID -> public
// key) with NodePermissions, for a server configured in Go.
func NkeyUsers(controlPub string, nodes map[string]string) []*server.NkeyUser {
	out := []*server.NkeyUser{{Nkey: controlPub}}
	for id, pub := range nodes {
		out = append(out, &server.NkeyUser{Nkey: pub, Permissions: NodePermissions(id)})
	}
	return out
}

// Config configures an embedded server.
type Config struct {
	// Listen is host:port for NATS clients (nodes). Default
	// 127.0.0.1:4222, enough for one host; port 0 picks a free one.
	Listen string
	// StoreDir holds JetStream's files (required).
	StoreDir string
	// NodeKey maps an NKey public key to the node it belongs to (false:
	// no such node, the connection is refused). It is asked on every
	// connection, so a removed node cannot connect again. Required.
	NodeKey func(pub string) (id string, ok bool)
	// TLS, if set, makes TCP clients use TLS (ServerTLS makes one);
	// in-process connections need none.
	TLS *tls.Config
	Log *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:4222"
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.StoreDir == "" || c.NodeKey == nil {
		return errs.New(errs.InvalidArgument, "fabric: a store directory and a node key lookup are required")
	}
	if _, _, err := splitListen(c.Listen); err != nil {
		return err
	}
	return nil
}

func splitListen(l string) (string, int, error) {
	host, port, err := net.SplitHostPort(l)
	if err != nil {
		return "", 0, errs.New(errs.InvalidArgument, "nats listen address %q: want host:port", l)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return "", 0, errs.New(errs.InvalidArgument, "nats listen address %q: bad port", l)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	return host, p, nil
}

// Server is an embedded NATS server. Close it when done.
type Server struct {
	ns      *server.Server
	control nkeys.KeyPair
	log     *slog.Logger
	auth    *auth
}

// Start starts an embedded server with JetStream and waits until it
// accepts connections (errs.Unavailable if it does not within 10 s).
func Start(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	host, port, _ := splitListen(cfg.Listen)
	control, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StoreDir, 0o700); err != nil {
		return nil, fmt.Errorf("nats store: %w", err)
	}
	controlPub, _ := control.PublicKey()
	a := &auth{controlPub: controlPub, nodeKey: cfg.NodeKey, log: cfg.Log, conns: map[string][]uint64{}}
	opts := &server.Options{
		ServerName:                 "minions",
		Host:                       host,
		Port:                       port,
		JetStream:                  true,
		StoreDir:                   cfg.StoreDir,
		NoLog:                      true,
		NoSigs:                     true,
		AlwaysEnableNonce:          true,
		CustomClientAuthentication: a,
	}
	if cfg.TLS != nil {
		opts.TLS, opts.TLSConfig, opts.TLSTimeout = true, cfg.TLS, 5
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, errs.New(errs.InvalidArgument, "nats server: %v", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, errs.New(errs.Unavailable, "nats server on %s did not start within 10s (is the port taken?)", cfg.Listen)
	}
	return &Server{ns: ns, control: control, log: cfg.Log, auth: a}, nil
}

// ClientURL is the nats:// URL clients on this host reach the server at.
func (s *Server) ClientURL() string { return s.ns.ClientURL() }

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ns.Addr() }

// Close shuts the server down and waits for it.
func (s *Server) Close() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// DisconnectNode closes every connection node id has open (after its
// host was removed, NodeKey refuses it from then on) and reports how
// many there were.
func (s *Server) DisconnectNode(id string) int {
	s.auth.mu.Lock()
	ids := s.auth.conns[id]
	delete(s.auth.conns, id)
	s.auth.mu.Unlock()
	n := 0
	for _, cid := range ids {
		if s.ns.DisconnectClientByID(cid) == nil {
			n++
		}
	}
	return n
}

// Control connects the control plane to this server in-process, with no
// subject restrictions.
func (s *Server) Control(name string) (*Conn, error) {
	pub, _ := s.control.PublicKey()
	// In-process needs no TLS: a nats:// URL keeps the client from asking.
	url := "nats://" + strings.TrimPrefix(strings.TrimPrefix(s.ns.ClientURL(), "tls://"), "nats://")
	nc, err := nats.Connect(url, nats.InProcessServer(s.ns), nats.Name(name),
		nats.Nkey(pub, s.control.Sign), nats.MaxReconnects(-1))
	if err != nil {
		return nil, errs.New(errs.Unavailable, "connect to the embedded nats server: %v", err)
	}
	return newConn(nc), nil
}

// InProcess is a node connection option for a node in the same process
// as the server (the control plane's own host): no TCP.
func (s *Server) InProcess() nats.Option { return nats.InProcessServer(s.ns) }

// auth admits the control plane's key and registered node keys that
// sign the connection's nonce, each with its permissions.
type auth struct {
	controlPub string
	nodeKey    func(string) (string, bool)
	log        *slog.Logger

	mu    sync.Mutex
	conns map[string][]uint64 // node ID -> the last client IDs admitted (some may be gone)
}

func (a *auth) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	o := c.GetOpts()
	if o.Nkey == "" || !verifyNonce(o.Nkey, o.Sig, c.GetNonce()) {
		a.log.Warn("nats connection refused: no valid nkey signature", "remote", addrString(c.RemoteAddress()))
		return false
	}
	if o.Nkey == a.controlPub {
		c.RegisterUser(&server.User{Username: "control"})
		return true
	}
	id, ok := a.nodeKey(o.Nkey)
	if !ok || !ValidID(id) {
		a.log.Warn("nats connection refused: unknown node key", "remote", addrString(c.RemoteAddress()))
		return false
	}
	c.RegisterUser(&server.User{Username: "node-" + id, Permissions: NodePermissions(id)})
	a.mu.Lock()
	// A node has one connection; a few remembered cover reconnects.
	ids := append(a.conns[id], c.GetID())
	if len(ids) > 8 {
		ids = ids[len(ids)-8:]
	}
	a.conns[id] = ids
	a.mu.Unlock()
	return true
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func verifyNonce(pub, sig string, nonce []byte) bool { return nodeauth.VerifyRaw(pub, sig, nonce) }
