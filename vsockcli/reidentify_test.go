package vsockcli

import (
	"bytes"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// TestReidentify drives reidentify@minions through the relay against the
// in-process agent (no network change: that would move the test host's
// eth0; the real guest is in TestTemplateClones, vm/hypervisor/qemu).
func TestReidentify(t *testing.T) {
	e := newEnv(t, envOpts{})
	ctx := testCtx(t)
	c := e.client(ctx)
	old := e.srv.HostKey()
	owner := newSigner(t)

	for _, bad := range []Identity{
		{Hostname: "", MachineID: NewMachineID()},
		{Hostname: "x", MachineID: "ABCDEF0123456789ABCDEF0123456789"},
		{Hostname: "x", MachineID: NewMachineID(), MAC: "01:00:5e:00:00:01"},
		{Hostname: "x", MachineID: NewMachineID(), Gateway: netip.MustParseAddr("10.0.0.1")},
		{Hostname: "x", MachineID: NewMachineID(), AuthorizedKeys: []string{"nope"}},
	} {
		if _, err := c.Reidentify(ctx, bad); !errors.Is(err, errs.InvalidArgument) {
			t.Errorf("Reidentify(%+v) = %v, want InvalidArgument", bad, err)
		}
	}
	if !bytes.Equal(e.srv.HostKey().Marshal(), old.Marshal()) {
		t.Fatal("a refused identity changed the agent key")
	}

	id := Identity{Hostname: "clone-7", MachineID: NewMachineID(),
		AuthorizedKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(owner.PublicKey())))}}
	got, err := c.Reidentify(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(got.AgentHostKey.Marshal(), old.Marshal()) || !bytes.Equal(got.AgentHostKey.Marshal(), e.srv.HostKey().Marshal()) {
		t.Fatal("the reported agent key is not the agent's new key")
	}
	e.rec.mu.Lock()
	hostname, clock := e.rec.hostname, e.rec.time
	e.rec.mu.Unlock()
	if hostname != "clone-7" || time.Since(clock).Abs() > 2*time.Second {
		t.Errorf("hostname %q, clock %v", hostname, clock)
	}
	if !got.ClockFromReceipt || len(got.StepMillis) != len(got.Steps) {
		t.Errorf("reply: clock from receipt %v, %d step times for %d steps", got.ClockFromReceipt, len(got.StepMillis), len(got.Steps))
	}
	if b, _ := os.ReadFile(filepath.Join(e.root, "etc/machine-id")); string(b) != id.MachineID+"\n" {
		t.Errorf("machine-id %q", b)
	}
	// The next connection is pinned to the new key.
	cfg := e.config()
	cfg.HostKey = ssh.FixedHostKey(got.AgentHostKey)
	c2, err := WaitReady(ctx, e.ep, cfg)
	if err != nil {
		t.Fatalf("dial pinned to the new key: %v", err)
	}
	c2.Close()
}
