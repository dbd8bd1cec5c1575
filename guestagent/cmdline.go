package guestagent

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/guestagent/proto"
)

// Cmdline is what the agent reads from the kernel command line.
type Cmdline struct {
	ID        string        // minions.id
	Name      string        // minions.name (hostname)
	HostKey   ssh.PublicKey // minions.hostkey
	IP        netip.Prefix  // minions.ip (invalid when absent)
	Gateway   netip.Addr    // minions.gw
	DNS       netip.Addr    // minions.dns
	PortName  string        // minions.port (default proto.DefaultPortName)
	VsockPort uint32        // minions.vsockport (default proto.DefaultVsockPort)
	Root      string        // root= (default /dev/vda)
	RootFS    string        // rootfstype= (default ext4)
	ReadOnly  bool          // ro (rw is the default)
	Init      string        // init= (default /sbin/init)
	Unknown   map[string]string
}

// ParseCmdline parses a kernel command line. Malformed minions.* values
// are errors (the host built them); other parameters are kept in Unknown.
func ParseCmdline(s string) (Cmdline, error) {
	c := Cmdline{
		PortName:  proto.DefaultPortName,
		VsockPort: proto.DefaultVsockPort,
		Root:      "/dev/vda",
		RootFS:    "ext4",
		Init:      "/sbin/init",
		Unknown:   map[string]string{},
	}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		var err error
		switch k {
		case "minions.id":
			c.ID = v
		case "minions.name":
			c.Name = v
		case "minions.hostkey":
			var raw []byte
			if raw, err = base64.StdEncoding.DecodeString(v); err == nil {
				c.HostKey, err = ssh.ParsePublicKey(raw)
			}
		case "minions.ip":
			c.IP, err = netip.ParsePrefix(v)
		case "minions.gw":
			c.Gateway, err = netip.ParseAddr(v)
		case "minions.dns":
			c.DNS, err = netip.ParseAddr(v)
		case "minions.port":
			c.PortName = v
		case "minions.vsockport":
			var n uint64
			n, err = strconv.ParseUint(v, 10, 32)
			c.VsockPort = uint32(n)
		case "root":
			c.Root = v
		case "rootfstype":
			c.RootFS = v
		case "ro":
			c.ReadOnly = true
		case "rw":
			c.ReadOnly = false
		case "init":
			c.Init = v
		default:
			c.Unknown[k] = v
		}
		if err != nil {
			return c, fmt.Errorf("kernel command line: %s: %w", k, err)
		}
	}
	return c, nil
}
