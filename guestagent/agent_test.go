package guestagent

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/guestagent/proto"
)

func signer(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestParseCmdline(t *testing.T) {
	key := signer(t).PublicKey()
	b64 := base64.StdEncoding.EncodeToString(key.Marshal())
	c, err := ParseCmdline("console=ttyS0 root=/dev/vdb rw quiet minions.id=0123456789ab minions.name=web " +
		"minions.hostkey=" + b64 + " minions.ip=10.0.0.5/24 minions.gw=10.0.0.1 minions.dns=1.1.1.1 " +
		"minions.vsockport=2000 init=/bin/sh tsc_early_khz=1000\n")
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != "0123456789ab" || c.Name != "web" || !bytes.Equal(c.HostKey.Marshal(), key.Marshal()) ||
		c.IP != netip.MustParsePrefix("10.0.0.5/24") || c.Gateway != netip.MustParseAddr("10.0.0.1") ||
		c.DNS != netip.MustParseAddr("1.1.1.1") || c.VsockPort != 2000 || c.PortName != proto.DefaultPortName ||
		c.Root != "/dev/vdb" || c.RootFS != "ext4" || c.ReadOnly || c.Init != "/bin/sh" || c.Unknown["tsc_early_khz"] != "1000" {
		t.Fatalf("parsed %+v", c)
	}
	d, err := ParseCmdline("")
	if err != nil || d.Root != "/dev/vda" || d.Init != "/sbin/init" || d.VsockPort != proto.DefaultVsockPort || d.HostKey != nil || d.IP.IsValid() {
		t.Fatalf("defaults %+v %v", d, err)
	}
	for _, bad := range []string{"minions.hostkey=!!", "minions.hostkey=AAAA", "minions.ip=10.0.0.5", "minions.gw=x", "minions.vsockport=-1"} {
		if _, err := ParseCmdline(bad); err == nil {
			t.Errorf("ParseCmdline(%q) accepted", bad)
		}
	}
}

func TestParseMounts(t *testing.T) {
	in := `/dev/vda / ext4 rw,relatime 0 0
proc /proc proc rw,nosuid 0 0
/dev/vdb /data xfs rw 0 0
/dev/vdc /ro ext4 ro,relatime 0 0
/dev/vda /bind ext4 rw,relatime 0 0
/dev/vdd /with\040space ext4 rw 0 0
tmpfs /tmp tmpfs rw 0 0
/dev/sr0 /cdrom iso9660 ro 0 0
`
	got := parseMounts(in)
	want := []Mount{
		{"/dev/vda", "/", "ext4"},
		{"/dev/vdb", "/data", "xfs"},
		{"/dev/vdd", "/with space", "ext4"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("mount %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestLookupUser(t *testing.T) {
	p := filepath.Join(t.TempDir(), "passwd")
	os.WriteFile(p, []byte("root:x:0:0:root:/root:/bin/bash\nbad:x:y:0::/:\nalice:x:1000:1000::/home/alice:\n"), 0o644)
	tests := []struct {
		name string
		want User
		ok   bool
	}{
		{"root", User{"root", 0, 0, "/root", "/bin/bash"}, true},
		{"alice", User{"alice", 1000, 1000, "/home/alice", "/bin/sh"}, true},
		{"bad", User{}, false},
		{"nobody", User{}, false},
	}
	for _, tt := range tests {
		u, err := LookupUser(p, tt.name)
		if (err == nil) != tt.ok || u != tt.want {
			t.Errorf("LookupUser(%q) = %+v, %v", tt.name, u, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	key := signer(t).PublicKey()
	power := func(bool) error { return nil }
	for _, tt := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, false},
		{Config{AuthorizedKey: key}, false},
		{Config{AuthorizedKey: key, Power: power}, true},
		{Config{AuthorizedKey: key, Power: power, FreezeTimeout: -time.Second}, false},
	} {
		if err := tt.cfg.Validate(); (err == nil) != tt.ok {
			t.Errorf("Validate(%+v) = %v", tt.cfg, err)
		}
	}
}

// TestServeConnPipe drives the SSH server over a socketpair with a plain SSH
// client: the authorized key gets in, any other is refused, unknown
// requests and channels are refused.
func TestServeConnPipe(t *testing.T) {
	good, bad := signer(t), signer(t)
	srv, err := NewServer(Config{
		AuthorizedKey: good.PublicKey(),
		HostKeyPath:   filepath.Join(t.TempDir(), "key"),
		Power:         func(bool) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(s ssh.Signer) (*ssh.Client, error) {
		a, b := socketpair(t)
		go srv.ServeConn(ctx, b)
		conn, chans, reqs, err := ssh.NewClientConn(a, "agent", &ssh.ClientConfig{
			User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(s)},
			HostKeyCallback: ssh.FixedHostKey(srv.HostKey()),
		})
		if err != nil {
			return nil, err
		}
		return ssh.NewClient(conn, chans, reqs), nil
	}
	if _, err := dial(bad); err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("wrong key: %v", err)
	}
	c, err := dial(good)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ok, reply, err := c.SendRequest(proto.ReqPing, true, []byte("{}"))
	if err != nil || !ok || !bytes.Contains(reply, []byte(`"boot_id"`)) {
		t.Fatalf("ping: %v %s %v", ok, reply, err)
	}
	if ok, _, _ := c.SendRequest("tcpip-forward", true, nil); ok {
		t.Fatal("tcpip-forward accepted")
	}
	ok, reply, _ = c.SendRequest(proto.ReqConfigure, true, []byte("{not json"))
	if ok || !bytes.Contains(reply, []byte(`"error"`)) {
		t.Fatalf("bad configure payload: %v %s", ok, reply)
	}
	if _, _, err := c.OpenChannel("x11", nil); err == nil {
		t.Fatal("x11 channel accepted")
	}
}

// TestNetworkInNetns configures lo and a dummy-less "eth0" stand-in in a
// fresh network namespace with the agent's own rtnetlink code.
func TestNetworkInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	done := make(chan error, 1)
	go func() {
		// The thread is left in the new namespace and never reused.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			done <- err
			return
		}
		if lo.Flags&net.FlagUp != 0 {
			done <- nil
			t.Error("lo already up in a new namespace")
			return
		}
		if err := ConfigureNetwork(netip.Prefix{}, netip.Addr{}, netip.Addr{}, 0); err != nil {
			done <- err
			return
		}
		if err := AddAddr(lo, netip.MustParsePrefix("10.77.0.2/24")); err != nil {
			done <- err
			return
		}
		if err := AddAddr(lo, netip.MustParsePrefix("10.77.0.2/24")); err != nil {
			done <- err // EEXIST must be fine
			return
		}
		if err := AddDefaultRoute(lo, netip.MustParseAddr("10.77.0.1")); err != nil {
			done <- err
			return
		}
		lo, _ = net.InterfaceByName("lo")
		addrs, _ := lo.Addrs()
		var s []string
		for _, a := range addrs {
			s = append(s, a.String())
		}
		if lo.Flags&net.FlagUp == 0 || !strings.Contains(strings.Join(s, " "), "10.77.0.2/24") {
			t.Errorf("lo flags %v addrs %v", lo.Flags, s)
		}
		routes, _ := os.ReadFile("/proc/thread-self/net/route")
		// Default route: destination 00000000, gateway 10.77.0.1 = 01 00 4D 0A.
		if !strings.Contains(string(routes), "lo\t00000000\t01004D0A") {
			t.Errorf("no default route via 10.77.0.1 in\n%s", routes)
		}
		if err := ConfigureNetwork(netip.MustParsePrefix("10.0.0.2/24"), netip.Addr{}, netip.Addr{}, 50*time.Millisecond); err == nil {
			t.Error("ConfigureNetwork succeeded without eth0")
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestBroadcast(t *testing.T) {
	for in, want := range map[string]string{"10.0.0.5/24": "10.0.0.255", "172.16.3.4/12": "172.31.255.255", "10.1.2.3/30": "10.1.2.3"} {
		if got := broadcast(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("broadcast(%s) = %s, want %s", in, got, want)
		}
	}
}

func socketpair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var conns [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	return conns[0], conns[1]
}

func TestHostKeyReplacesTornKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "k")
	s1, err := LoadOrCreateHostKey(p)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := LoadOrCreateHostKey(p)
	if err != nil || !bytes.Equal(s1.PublicKey().Marshal(), s2.PublicKey().Marshal()) {
		t.Fatalf("reload changed the key: %v", err)
	}
	os.WriteFile(p, nil, 0o600) // a rename that beat its data to disk
	s3, err := LoadOrCreateHostKey(p)
	if err != nil || bytes.Equal(s3.PublicKey().Marshal(), s1.PublicKey().Marshal()) {
		t.Fatalf("torn key not replaced: %v", err)
	}
}
