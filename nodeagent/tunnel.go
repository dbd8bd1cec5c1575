package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// The port tunnel: one direct connection per node (ticket kind "tunnel",
// see direct.go) carrying an SSH connection with no auth of its own (TLS
// authenticated both ends). Each direct-tcpip channel names a VM ID as
// its host and a port; the node dials that port of the VM on its bridge
// if the VM is one of its own and runs, and refuses anything else (no
// address, no other host, no stopped VM). Used by the HTTPS proxy and
// port forwards to VMs on other hosts.

// directTCPIP is the payload of an SSH direct-tcpip channel (RFC 4254).
type directTCPIP struct {
	Host     string
	Port     uint32
	OrigHost string
	OrigPort uint32
}

// serveTunnel serves the tunnel's SSH connection on c until it ends.
func (d *Direct) serveTunnel(ctx context.Context, c net.Conn, eng engine.Engine) error {
	sc, chans, reqs, err := ssh.NewServerConn(c, d.sshCfg)
	if err != nil {
		return fmt.Errorf("tunnel ssh: %w", err)
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "direct-tcpip" {
			nc.Reject(ssh.UnknownChannelType, "only direct-tcpip")
			continue
		}
		go d.tunnelChannel(ctx, nc, eng)
	}
	return nil
}

func (d *Direct) tunnelChannel(ctx context.Context, nc ssh.NewChannel, eng engine.Engine) {
	var p directTCPIP
	if err := ssh.Unmarshal(nc.ExtraData(), &p); err != nil || p.Port < 1 || p.Port > 65535 {
		nc.Reject(ssh.ConnectionFailed, "bad direct-tcpip request")
		return
	}
	addr, err := d.vmAddr(ctx, eng, p.Host, int(p.Port))
	if err != nil {
		nc.Reject(ssh.Prohibited, errs.Code(err)+": "+err.Error())
		return
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, fmt.Sprintf("port %d of vm %s: %v", p.Port, p.Host, err))
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		conn.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	splice(ch, conn)
}

// vmAddr is ip:port of VM id on this node: errs.NotFound unless id is
// one of its VMs, errs.FailedPrecondition unless it runs with an address.
func (d *Direct) vmAddr(ctx context.Context, eng engine.Engine, id string, port int) (string, error) {
	if !vmIDRE().MatchString(id) {
		return "", errs.New(errs.NotFound, "%q is not a vm of this node", id)
	}
	inst, err := eng.Get(ctx, id)
	if err != nil {
		return "", err
	}
	if inst.State != vm.Running {
		return "", errs.New(errs.FailedPrecondition, "vm %s is %s, not running", id, inst.State)
	}
	ip, err := instanceIP(inst.IP)
	if err != nil {
		return "", errs.New(errs.FailedPrecondition, "vm %s has no address", id)
	}
	return net.JoinHostPort(ip.String(), strconv.Itoa(port)), nil
}

// vmIDRE is what a VM ID may look like (vm.NewID makes 12 hex digits).
var vmIDRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`) })

// instanceIP parses an Instance.IP (an address, or one with its prefix).
func instanceIP(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

// DialPort connects to port of VM id on the node, through the node's
// port tunnel (one direct connection, opened on first use and shared).
// Errors: errs.InvalidArgument for a bad port; an error wrapping
// errors.ErrUnsupported when there is no tunnel to this node (no direct
// path: the caller falls back to the guest agent); errs.NotFound or
// errs.FailedPrecondition when the node refuses (not its VM, not
// running); errs.Unavailable when nothing accepts on the port. The
// connection does not support deadlines. Safe for concurrent use.
func (r *Remote) DialPort(ctx context.Context, id string, port int) (net.Conn, error) {
	if port < 1 || port > 65535 {
		return nil, errs.New(errs.InvalidArgument, "port %d: want 1-65535", port)
	}
	for attempt := 0; ; attempt++ {
		cl, err := r.portTunnel(ctx)
		if err != nil {
			var nd *errNoDirect
			if errors.As(err, &nd) {
				return nil, fmt.Errorf("tunnel to node %s: %w (%v)", r.cfg.ID, errors.ErrUnsupported, err)
			}
			return nil, err
		}
		c, err := cl.Dial("tcp", net.JoinHostPort(id, strconv.Itoa(port)))
		if err == nil {
			return c, nil
		}
		var oce *ssh.OpenChannelError
		if errors.As(err, &oce) {
			if oce.Reason == ssh.Prohibited {
				code, msg, _ := strings.Cut(oce.Message, ": ")
				if cl := errs.FromCode(code); cl != nil {
					return nil, errs.New(cl, "%s", msg)
				}
				return nil, errs.New(errs.PermissionDenied, "%s", oce.Message)
			}
			return nil, errs.New(errs.Unavailable, "%s", oce.Message)
		}
		// The tunnel broke: drop it and open a new one, once.
		r.dropTunnel(cl)
		if attempt > 0 || ctx.Err() != nil {
			return nil, errs.New(errs.Unavailable, "tunnel to node %s: %v", r.cfg.ID, err)
		}
	}
}

// portTunnel returns the open tunnel or opens one.
func (r *Remote) portTunnel(ctx context.Context) (*ssh.Client, error) {
	r.tmu.Lock()
	defer r.tmu.Unlock()
	if r.tunnel != nil {
		return r.tunnel, nil
	}
	c, err := r.dialDirect(ctx, kindTunnel, "")
	if err != nil {
		return nil, err
	}
	// TLS pinned the node and the node verified us: no SSH auth or host
	// key check on top.
	sc, chans, reqs, err := ssh.NewClientConn(c, "node:"+r.cfg.ID, &ssh.ClientConfig{User: "minions",
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
	if err != nil {
		c.Close()
		return nil, &errNoDirect{err}
	}
	cl := ssh.NewClient(sc, chans, reqs)
	r.tunnel = cl
	go func() { cl.Wait(); r.dropTunnel(cl) }()
	return cl, nil
}

func (r *Remote) dropTunnel(cl *ssh.Client) {
	r.tmu.Lock()
	if r.tunnel == cl {
		r.tunnel = nil
	}
	r.tmu.Unlock()
	cl.Close()
}
