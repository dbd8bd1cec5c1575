package service

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
)

func TestNextHostSubnet(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		name         string
		cluster      string
		local        string
		used         []string
		want, errHas string
	}{
		{name: "first", cluster: "10.88.0.0/16", local: "10.210.0.0/16", want: "10.88.0.0/24"},
		{name: "skips used", cluster: "10.88.0.0/16", local: "10.210.0.0/16", used: []string{"10.88.0.0/24", "10.88.2.0/24"}, want: "10.88.1.0/24"},
		{name: "fills a hole", cluster: "10.88.0.0/16", local: "10.210.0.0/16", used: []string{"10.88.1.0/24", "10.88.0.0/24"}, want: "10.88.2.0/24"},
		{name: "skips the local subnet", cluster: "10.88.0.0/22", local: "10.88.0.0/23", want: "10.88.2.0/24"},
		{name: "a /24 cluster", cluster: "10.88.7.0/24", local: "10.210.0.0/16", want: "10.88.7.0/24"},
		{name: "full", cluster: "10.88.0.0/23", local: "10.210.0.0/16", used: []string{"10.88.0.0/24", "10.88.1.0/24"}, errHas: "no free /24 left"},
		{name: "too small", cluster: "10.88.0.0/25", local: "10.210.0.0/16", errHas: "/24 or larger"},
		{name: "ipv6", cluster: "fd00::/64", local: "10.210.0.0/16", errHas: "IPv4"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := nextHostSubnet(p(tc.cluster), p(tc.local), tc.used)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("got %v %v, want an error with %q", got, err, tc.errHas)
				}
				return
			}
			if err != nil || got.String() != tc.want {
				t.Fatalf("got %v %v, want %s", got, err, tc.want)
			}
		})
	}
}

func joinNew(t *testing.T, s *Service, c Caller, name string) JoinResult {
	t.Helper()
	ctx := context.Background()
	inv, err := s.HostAdd(ctx, c, name)
	if err != nil {
		t.Fatal(err)
	}
	pub := fakeNodeKey()
	res, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: pub, Address: "198.51.100.9"})
	if err != nil {
		t.Fatalf("join %s: %v", name, err)
	}
	return res
}

// TestHostSubnetsAtJoin: each joining host gets its own /24 of the
// cluster range in the join's transaction, returned to the node and shown
// by host status (and its JSON); the control plane's own host keeps its
// configured subnet; a restart of the control plane (a new Service on the
// same store) keeps every assignment; a removed host's subnet is free
// again.
func TestHostSubnetsAtJoin(t *testing.T) {
	ctx := context.Background()
	fx, _, root := hostFixture(t)
	s := fx.svc
	if _, err := s.EnsureLocalHost(ctx, "cp", testNKey, "v1"); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"n1": "10.88.0.0/24", "n2": "10.88.1.0/24", "n3": "10.88.2.0/24"}
	for _, name := range []string{"n1", "n2", "n3"} {
		res := joinNew(t, s, root, name)
		if res.Subnet != want[name] {
			t.Fatalf("%s joined with subnet %q, want %s", name, res.Subnet, want[name])
		}
		h := hostState(t, s, root, name)
		if h.Subnet != want[name] {
			t.Fatalf("%s shows subnet %q", name, h.Subnet)
		}
		b, _ := json.Marshal(h)
		if !strings.Contains(string(b), `"subnet":"`+want[name]+`"`) {
			t.Fatalf("%s JSON %s", name, b)
		}
	}
	if h := hostState(t, s, root, "cp"); h.Subnet != s.cfg.Subnet.String() || !h.Local {
		t.Fatalf("the local host shows %+v, want its configured subnet %s", h, s.cfg.Subnet)
	}

	// A restart: another service on the same store sees the same
	// assignments and hands out the next free one.
	s2 := restartService(t, fx)
	s2.SetHosts(HostsConfig{JoinURL: "http://203.0.113.7:3000", NATSURLs: []string{"nats://203.0.113.7:4222"}})
	list, err := s2.HostList(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range list {
		if w, ok := want[h.Name]; ok && h.Subnet != w {
			t.Fatalf("after restart %s has %q, want %s", h.Name, h.Subnet, w)
		}
	}
	if res := joinNew(t, s2, root, "n4"); res.Subnet != "10.88.3.0/24" {
		t.Fatalf("n4 after restart: %q", res.Subnet)
	}

	// Remove frees it: the next join gets the lowest free /24.
	if err := s2.HostRemove(ctx, root, "n2"); err != nil {
		t.Fatal(err)
	}
	if res := joinNew(t, s2, root, "n5"); res.Subnet != "10.88.1.0/24" {
		t.Fatalf("n5 after removing n2: %q, want n2's 10.88.1.0/24", res.Subnet)
	}
	// A host still joining has none.
	inv, err := s2.HostAdd(ctx, root, "n6")
	if err != nil || inv.Host.Subnet != "" {
		t.Fatalf("a joining host: %+v %v", inv.Host, err)
	}
}

// TestHostSubnetOverlapRefused: a cluster range that overlaps the control
// plane's own subnet is refused with a clear error before the token is
// taken (a corrected configuration lets the same token join), and a full
// range says so.
func TestHostSubnetOverlapRefused(t *testing.T) {
	ctx := context.Background()
	fx, clk, root := hostFixture(t)
	s := fx.svc
	bad := HostsConfig{JoinURL: "http://203.0.113.7:3000", NATSURLs: []string{"nats://203.0.113.7:4222"}, Now: clk.Now,
		ClusterSubnet: netip.MustParsePrefix("10.0.0.0/8")} // holds the local 10.210.0.0/16
	s.SetHosts(bad)
	inv, err := s.HostAdd(ctx, root, "n1")
	if err != nil {
		t.Fatal(err)
	}
	pub := fakeNodeKey()
	// A malformed address: refused, the token unspent.
	if _, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: pub, Address: "not an/address"}); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("join with a malformed address: %v", err)
	}
	_, err = s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: pub})
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("join with an overlapping cluster_subnet: %v", err)
	}
	if h := hostState(t, s, root, "n1"); h.State != store.HostJoining || h.Subnet != "" {
		t.Fatalf("a refused join changed the host: %+v", h)
	}
	if err := CheckClusterSubnet(bad.ClusterSubnet, s.cfg.Subnet); err == nil || !strings.Contains(err.Error(), "overlaps") {
		t.Fatalf("CheckClusterSubnet: %v", err)
	}

	small := bad
	small.ClusterSubnet = netip.MustParsePrefix("10.88.0.0/24")
	s.SetHosts(small)
	res, err := s.JoinHost(ctx, JoinRequest{Token: inv.Token, NKey: pub})
	if err != nil || res.Subnet != "10.88.0.0/24" {
		t.Fatalf("the same token after fixing the range: %+v %v", res, err)
	}
	inv2, _ := s.HostAdd(ctx, root, "n2")
	pub2 := fakeNodeKey()
	if _, err := s.JoinHost(ctx, JoinRequest{Token: inv2.Token, NKey: pub2}); !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "no free /24") {
		t.Fatalf("join into a full range: %v", err)
	}
	if h := hostState(t, s, root, "n2"); h.Subnet != "" || h.State != store.HostJoining {
		t.Fatalf("a join into a full range changed the host: %+v", h)
	}
}

// restartService opens a second Service on fx's store, as a restarted
// control plane would.
func restartService(t *testing.T, fx *fixture) *Service {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	key, _ := ssh.NewSignerFromKey(priv)
	s, err := New(Config{StateDir: filepath.Join(fx.dir, "state2"), ReadyTimeout: time.Second},
		Deps{DB: fx.svc.DB, Driver: fx.drv, Network: fx.ports, Images: oneImage{filepath.Join(fx.dir, "base.raw")}, Disks: fileDisks{}, HostKey: key})
	if err != nil {
		t.Fatal(fmt.Errorf("restart: %w", err))
	}
	return s
}

// fakeNodeKey is a distinct, well-formed NKey user public key.
func fakeNodeKey() string {
	const b32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	b := make([]byte, 55)
	rand.Read(b)
	for i := range b {
		b[i] = b32[int(b[i])%32]
	}
	return "U" + string(b)
}

// TestRecordHeartbeatsBatch: one call records many nodes in one
// transaction, stores the address each node reaches the fabric from (or
// the one it was given), names removed hosts, leaves malformed reports
// out and a malformed address out of a report.
func TestRecordHeartbeatsBatch(t *testing.T) {
	ctx := context.Background()
	fx, clk, root := hostFixture(t)
	s := fx.svc
	a, b := joinNew(t, s, root, "a"), joinNew(t, s, root, "b")
	gone, err := s.RecordHeartbeats(ctx, map[string]Heartbeat{
		a.HostID: {CPUs: 4, MemoryMiB: 8192, Version: "v1", Address: "10.1.2.3"},
		b.HostID: {CPUs: 2, Version: "v1", Address: "not an ip"},
		"gone1":  {CPUs: 1},
	})
	if err != nil || len(gone) != 1 || gone[0] != "gone1" {
		t.Fatalf("gone %v %v", gone, err)
	}
	if h := hostState(t, s, root, "a"); h.State != store.HostReady || h.CPUs != 4 || h.Address != "10.1.2.3" || !h.LastHeartbeat.Equal(clk.Now()) {
		t.Fatalf("a: %+v", h)
	}
	// A malformed address is left out, the rest of the report is not.
	if h := hostState(t, s, root, "b"); h.State != store.HostReady || h.CPUs != 2 || h.Address != "198.51.100.9" {
		t.Fatalf("b's report with a malformed address: %+v", h)
	}
	// A host name (a node's --address) is an address too.
	if _, err := s.RecordHeartbeats(ctx, map[string]Heartbeat{b.HostID: {CPUs: 3, Address: "node-b.example.com"}}); err != nil {
		t.Fatal(err)
	}
	if h := hostState(t, s, root, "b"); h.CPUs != 3 || h.Address != "node-b.example.com" {
		t.Fatalf("b with a host name: %+v", h)
	}
	// Negative capacity: the report is dropped.
	if _, err := s.RecordHeartbeats(ctx, map[string]Heartbeat{b.HostID: {CPUs: -1}}); err != nil {
		t.Fatal(err)
	}
	if h := hostState(t, s, root, "b"); h.CPUs != 3 {
		t.Fatalf("b after a negative report: %+v", h)
	}
	if err := s.RecordHeartbeat(ctx, b.HostID, Heartbeat{Address: "no such/address"}); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("a bad address: %v", err)
	}
	// An empty address keeps the stored one.
	if _, err := s.RecordHeartbeats(ctx, map[string]Heartbeat{a.HostID: {CPUs: 5}}); err != nil {
		t.Fatal(err)
	}
	if h := hostState(t, s, root, "a"); h.CPUs != 5 || h.Address != "10.1.2.3" {
		t.Fatalf("a after an address-less beat: %+v", h)
	}
}

// TestHostAddUnreachableJoin: while the composition root says the join
// command could not work from another host, host add refuses with its
// reason and registers nothing.
func TestHostAddUnreachableJoin(t *testing.T) {
	fx, _, root := hostFixture(t)
	fx.svc.SetHosts(HostsConfig{JoinURL: "http://203.0.113.7:3000", NATSURLs: []string{"nats://203.0.113.7:4222"},
		JoinProblem: `the API listens on 127.0.0.1:3000 only: set bind = "0.0.0.0:3000"`})
	_, err := fx.svc.HostAdd(context.Background(), root, "node1")
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), `set bind = "0.0.0.0:3000"`) {
		t.Fatalf("add with an unreachable join address: %v", err)
	}
	if hs, _ := fx.svc.HostList(context.Background(), root); len(hs) != 0 {
		t.Fatalf("hosts: %+v", hs)
	}
}
