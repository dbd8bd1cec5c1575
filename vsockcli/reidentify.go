package vsockcli

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/textsafe"
)

// Identity is who a VM restored from a template (or forked) becomes. Zero
// network fields leave the guest's network alone.
type Identity struct {
	Hostname  string
	MachineID string // 32 lowercase hex digits; NewMachineID makes one
	MAC       string // the MAC the hypervisor gave the clone's NIC
	IP        netip.Prefix
	Gateway   netip.Addr
	DNS       netip.Addr
	// AuthorizedKeys are the owner's keys (authorized_keys lines).
	AuthorizedKeys []string
}

// Reidentified is what the agent did.
type Reidentified struct {
	// AgentHostKey is the agent's new host key: pin it in place of the
	// template's for every later connection (this one keeps working).
	AgentHostKey ssh.PublicKey
	SSHHostKeys  []string // the guest sshd's new public keys, if any
	Removed      []string // template leftovers deleted in the guest
	Steps        []string
	StepMillis   []int64 // the guest's time for each of Steps
	// FlushPending: the guest flushes the new identity files to its disk
	// after the reply (proto.ReidentifyReply.FlushPending).
	FlushPending bool
	// ClockFromReceipt: the guest's clock lags by the request's transit
	// only (proto.ReidentifyReply.ClockFromReceipt).
	ClockFromReceipt bool
	// NetworkMillis is the guest's time for eth0's move, which ran beside
	// the steps (proto.ReidentifyReply.NetworkMillis).
	NetworkMillis int64
	// CPU splits the guest's time during the call (nil from older
	// agents; proto.ReidentifyReply.CPU).
	CPU *proto.ReidentifyCPU
}

// NewMachineID returns a random machine-id (systemd's format).
func NewMachineID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Validate checks id as the agent will, so a bad identity is an
// errs.InvalidArgument before anything is sent.
func (id Identity) Validate() error {
	bad := func(format string, a ...any) error { return errs.New(errs.InvalidArgument, "identity: "+format, a...) }
	if id.Hostname == "" {
		return bad("no hostname")
	}
	if b, err := hex.DecodeString(id.MachineID); err != nil || len(b) != 16 || hex.EncodeToString(b) != id.MachineID {
		return bad("machine id %q: want 32 lowercase hex digits", id.MachineID)
	}
	if id.MAC != "" {
		if m, err := net.ParseMAC(id.MAC); err != nil || len(m) != 6 || m[0]&1 != 0 {
			return bad("mac %q: want a unicast ethernet address", id.MAC)
		}
	}
	if id.IP.IsValid() && !id.IP.Addr().Is4() {
		return bad("ip %s: want IPv4", id.IP)
	}
	if id.Gateway.IsValid() && !id.IP.IsValid() {
		return bad("gateway without an ip")
	}
	for _, k := range id.AuthorizedKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return bad("authorized key %q: %v", k, err)
		}
	}
	return nil
}

// Reidentify makes the guest into id: the agent reseeds the kernel RNG
// with 64 bytes of fresh host entropy, sets the clock to the host's (taken
// just before sending), sets hostname and machine-id, removes template
// leftovers (leases, seeds, the old journal), regenerates the sshd and
// agent host keys, writes the owner's keys and moves eth0 to the MAC and
// IP given, announcing them with gratuitous ARP. A refused identity is an
// errs.InvalidArgument (nothing sent) or errs.FailedPrecondition (the agent
// refused it; it changed nothing when it refused the input, and may have
// done a prefix of the steps when one failed).
func (c *Client) Reidentify(ctx context.Context, id Identity) (Reidentified, error) {
	if err := id.Validate(); err != nil {
		return Reidentified{}, err
	}
	req := proto.Reidentify{
		Hostname: id.Hostname, MachineID: id.MachineID, MAC: id.MAC,
		AuthorizedKeys: append([]string{}, id.AuthorizedKeys...),
		Entropy:        make([]byte, 64),
	}
	if id.IP.IsValid() {
		req.IP = id.IP.String()
	}
	if id.Gateway.IsValid() {
		req.Gateway = id.Gateway.String()
	}
	if id.DNS.IsValid() {
		req.DNS = id.DNS.String()
	}
	if _, err := rand.Read(req.Entropy); err != nil {
		return Reidentified{}, fmt.Errorf("reidentify: entropy: %w", err)
	}
	// The guest's new keys are made here, on the host's CPU: made under
	// TCG in a guest just restored they took hundreds of ms.
	var err error
	if req.SSHHostKeys, req.AgentHostKey, err = newGuestKeys(); err != nil {
		return Reidentified{}, fmt.Errorf("reidentify: %w", err)
	}
	req.TimeUnixNano = time.Now().UnixNano()
	var r proto.ReidentifyReply
	if err := c.call(ctx, proto.ReqReidentify, req, &r); err != nil {
		return Reidentified{}, err
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(r.AgentHostKey))
	if err != nil {
		return Reidentified{}, errs.New(errs.Unavailable, "reidentify: agent host key %q: %w", textsafe.Clean(r.AgentHostKey), err)
	}
	out := Reidentified{AgentHostKey: key}
	for _, k := range r.SSHHostKeys {
		out.SSHHostKeys = append(out.SSHHostKeys, textsafe.Clean(k))
	}
	for _, p := range r.Removed {
		out.Removed = append(out.Removed, textsafe.Clean(p))
	}
	for _, s := range r.Steps {
		out.Steps = append(out.Steps, textsafe.Clean(s))
	}
	out.StepMillis = r.StepMillis
	out.FlushPending = r.FlushPending
	out.ClockFromReceipt = r.ClockFromReceipt
	out.NetworkMillis = r.NetworkMillis
	out.CPU = r.CPU
	return out, nil
}

// newGuestKeys makes a guest's new sshd host keys (ed25519 and ECDSA
// P-256, by type) and agent host key (ed25519), as OpenSSH PEM private
// keys.
func newGuestKeys() (sshd map[string]string, agent string, err error) {
	encode := func(k crypto.Signer, comment string) (string, error) {
		block, err := ssh.MarshalPrivateKey(k, comment)
		if err != nil {
			return "", err
		}
		return string(pem.EncodeToMemory(block)), nil
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	_, ag, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, "", err
	}
	sshd = map[string]string{}
	if sshd["ed25519"], err = encode(ed, "root@minion"); err != nil {
		return nil, "", err
	}
	if sshd["ecdsa"], err = encode(ec, "root@minion"); err != nil {
		return nil, "", err
	}
	if agent, err = encode(ag, "minions-agent"); err != nil {
		return nil, "", err
	}
	return sshd, agent, nil
}
