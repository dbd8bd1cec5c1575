package guestagent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
)

// Server is the agent's SSH server. ServeConn is safe for concurrent use;
// each call serves one SSH connection.
type Server struct {
	cfg    Config
	ssh    *ssh.ServerConfig
	signer *swapSigner // the host key; reidentify replaces it
	log    *slog.Logger

	keyMu    sync.Mutex
	hostKeys [][]byte // the client keys accepted (wire form); configure replaces them

	freezeMu sync.Mutex
	frozen   []string        // mount points, in freeze order
	freezer  *ssh.ServerConn // the connection that froze them
	thawT    *time.Timer

	flushMu  sync.Mutex
	flushing chan struct{} // closed when the last flush after reidentify is done (nil: none)

	hurry     chan struct{} // closed by WaitFlushed: flushes wait for quiet no longer
	hurryOnce sync.Once
}

// NewServer validates cfg, loads or creates the host key and returns a
// Server.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	signer, err := loadOrCreateHostKey(cfg.HostKeyPath, cfg.Log)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Log, signer: &swapSigner{s: signer}, hostKeys: [][]byte{cfg.AuthorizedKey.Marshal()},
		hurry: make(chan struct{})}
	s.ssh = &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if !s.accepts(key) {
				return nil, errors.New("key not accepted")
			}
			return &ssh.Permissions{}, nil
		},
		ServerVersion: "SSH-2.0-minions-agent",
	}
	s.ssh.AddHostKey(s.signer)
	return s, nil
}

// accepts reports whether key may log in.
func (s *Server) accepts(key ssh.PublicKey) bool {
	b := key.Marshal()
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	for _, k := range s.hostKeys {
		if bytes.Equal(k, b) {
			return true
		}
	}
	return false
}

// setHostKeys replaces the client keys accepted (authorized_keys lines;
// at least one). Connections already in are not affected.
func (s *Server) setHostKeys(lines []string) error {
	var keys [][]byte
	for _, l := range lines {
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(l))
		if err != nil {
			return fmt.Errorf("host key %q: %w", l, err)
		}
		keys = append(keys, k.Marshal())
	}
	if len(keys) == 0 {
		return errors.New("no host keys")
	}
	s.keyMu.Lock()
	s.hostKeys = keys
	s.keyMu.Unlock()
	return nil
}

// HostKey returns the public half of the agent's host key.
func (s *Server) HostKey() ssh.PublicKey { return s.signer.PublicKey() }

// LoadOrCreateHostKey reads the OpenSSH-format private key at path, or
// creates an ed25519 key there (mode 0600, written atomically and synced).
// An unparsable key (torn by a power cut) is replaced.
func LoadOrCreateHostKey(path string) (ssh.Signer, error) {
	return loadOrCreateHostKey(path, slog.New(slog.DiscardHandler))
}

func loadOrCreateHostKey(path string, log *slog.Logger) (ssh.Signer, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		signer, perr := ssh.ParsePrivateKey(data)
		if perr == nil {
			return signer, nil
		}
		// A key torn by a power cut is useless; a new one at least lets
		// a host that re-pins reach the agent.
		log.Warn("host key unusable: creating a new one", "path", path, "err", perr)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read host key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "minions-agent")
	if err != nil {
		return nil, fmt.Errorf("marshal host key: %w", err)
	}
	if err := writeFileAtomic(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, fmt.Errorf("write host key: %w", err)
	}
	return ssh.NewSignerFromKey(priv)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// ServeConn runs the SSH protocol on c until the client disconnects or ctx
// ends, then closes c.
func (s *Server) ServeConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	conn, chans, reqs, err := ssh.NewServerConn(c, s.ssh)
	if err != nil {
		s.log.Debug("ssh handshake", "err", err)
		return
	}
	c.SetDeadline(time.Time{})
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	log := s.log.With("user", conn.User())
	fwd := newRemoteForwards(conn, log)
	defer fwd.closeAll()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for req := range reqs {
			if !fwd.handle(req) {
				s.handleGlobal(conn, req)
			}
		}
	}()
	for nc := range chans {
		switch nc.ChannelType() {
		case "session":
			ch, creqs, err := nc.Accept()
			if err != nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serveSession(ctx, conn, ch, creqs, log)
			}()
		case "direct-tcpip":
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.directTCPIP(ctx, nc)
			}()
		default:
			nc.Reject(ssh.UnknownChannelType, "unsupported channel type")
		}
	}
	conn.Wait()
	s.thawIfOwner(conn)
	wg.Wait()
}

func (s *Server) handleGlobal(conn *ssh.ServerConn, req *ssh.Request) {
	var (
		reply any
		err   error
	)
	switch req.Type {
	case proto.ReqPing:
		reply, err = s.ping()
	case proto.ReqStatus:
		reply, err = s.status()
	case proto.ReqConfigure:
		var c proto.Configure
		if err = unmarshal(req.Payload, &c); err == nil {
			err = s.configure(c)
			reply = struct{}{}
		}
	case proto.ReqFSFreeze:
		var frozen []string
		frozen, err = s.freeze(conn)
		reply = proto.FreezeReply{Frozen: frozen}
	case proto.ReqFSThaw:
		err = s.thaw()
		reply = struct{}{}
	case proto.ReqGrowFS:
		var size int64
		size, err = GrowFS(s.cfg.GrowMount)
		reply = proto.GrowReply{Size: size}
	case proto.ReqReidentify: // reidentify_linux.go
		received := time.Now()
		var r proto.Reidentify
		if err = unmarshal(req.Payload, &r); err == nil {
			if reply, err = s.reidentify(r, received); err == nil {
				defer s.afterReidentify() // after the reply
			}
		}
	case proto.ReqShutdown:
		var sd proto.Shutdown
		if err = unmarshal(req.Payload, &sd); err == nil {
			reply = struct{}{}
			defer s.shutdown(sd.Reboot)
		}
	default:
		if req.WantReply {
			req.Reply(false, nil)
		}
		return
	}
	if err != nil {
		s.log.Warn("request failed", "request", req.Type, "err", err)
		payload, _ := json.Marshal(proto.Error{Error: err.Error()})
		req.Reply(false, payload)
		return
	}
	payload, _ := json.Marshal(reply)
	req.Reply(true, payload)
}

func unmarshal(payload []byte, v any) error {
	if len(payload) == 0 {
		return nil
	}
	if err := json.Unmarshal(payload, v); err != nil {
		return fmt.Errorf("decode request: %w", err)
	}
	return nil
}

func (s *Server) shutdown(reboot bool) {
	go func() {
		// Let the reply reach the host first.
		time.Sleep(50 * time.Millisecond)
		// A re-identification's flush finishes first (bounded).
		wctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		s.WaitFlushed(wctx)
		cancel()
		s.log.Info("shutdown requested", "reboot", reboot)
		if err := s.cfg.Power(reboot); err != nil {
			s.log.Error("shutdown", "err", err)
		}
	}()
}
