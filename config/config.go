package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/jail"
	"github.com/minionsdev/minions/vm/network"
)

// DefaultFile is read by `serve` and `config show` when present.
const DefaultFile = "/etc/minions/config.toml"

// Config is the daemon's configuration: the config file, then flags.
// Unknown keys in the file are errors.
type Config struct {
	StateDir     string `toml:"state_dir"`     // default /var/lib/minions
	RunDir       string `toml:"run_dir"`       // default /run/minions (or <state_dir>/run)
	DefaultImage string `toml:"default_image"` // image create uses without --os (default images.DefaultImage)
	Hypervisor   string `toml:"hypervisor"`    // auto | qemu | qemu-kvm | qemu-tcg | cloud-hypervisor
	LogFormat    string `toml:"log_format"`    // auto (text on a terminal, else JSON) | text | json
	Subnet       string `toml:"subnet"`        // VM network, default network.DefaultSubnet
	Bind         string `toml:"bind"`          // HTTP API on TCP, default 127.0.0.1:3000 ("" off)
	AdminBind    string `toml:"admin_bind"`    // metrics, default 127.0.0.1:9090 ("" off)
	SSHBind      string `toml:"ssh_bind"`      // SSH front door, default 0.0.0.0:2222 ("" off)
	ProxyBind    string `toml:"proxy_bind"`    // HTTPS proxy, e.g. 0.0.0.0:443 ("" off)
	HTTPBind     string `toml:"http_bind"`     // HTTP-01 and redirects, or the local proxy without a domain
	Domain       string `toml:"domain"`        // VMs at https://<vm>.<domain>
	PublicIP     string `toml:"public_ip"`     // shown in DNS instructions
	ACMEEmail    string `toml:"acme_email"`    //
	ACMECA       string `toml:"acme_ca"`       // directory URL of any ACME CA
	ACMEStaging  bool   `toml:"acme_staging"`  // Let's Encrypt staging
	ACMERoot     string `toml:"acme_root"`     // PEM file of a private ACME CA's root (tests: Pebble)
	DNSResolver  string `toml:"dns_resolver"`  // host:port asked to verify custom domains (default: the system's resolver)
	// ProxyRate and ProxyBurst bound proxied requests per client IP per
	// second (default 50 and 100); a negative ProxyRate turns the limit off.
	ProxyRate  float64 `toml:"proxy_rate"`
	ProxyBurst int     `toml:"proxy_burst"`
	Policy     string  `toml:"policy"`      // sign-up over SSH: open | invite | closed (default closed)
	InviteCode string  `toml:"invite_code"` //
	// AdminKeys are SSH public keys (authorized_keys lines) that are
	// admins; AdminTokens are API token secrets that are admins.
	AdminKeys   []string `toml:"admin_keys"`
	AdminTokens []string `toml:"admin_tokens"`
	// DNS is the nameserver (IPv4) handed to guests; VMs may reach it on
	// port 53 even when it is a private address or the gateway.
	DNS string `toml:"dns"`
	// EgressAllow opens destinations VMs may not reach by default
	// (network.DeniedEgress: link-local and cloud metadata, RFC 1918,
	// CGNAT, loopback, multicast, reserved), one "PREFIX[ tcp|udp[/PORT]]"
	// each, e.g. "172.31.9.9" or "10.1.0.0/16 tcp/5432". The host's own
	// addresses stay closed to VMs whatever this says.
	EgressAllow []string `toml:"egress_allow"`

	// ProxyMaxConns bounds the proxy's concurrent client connections from
	// all addresses together (default 4096; negative turns it off).
	ProxyMaxConns int `toml:"proxy_max_conns"`

	// Resources: see resources.go.
	DefaultQuota       *QuotaConfig `toml:"default_quota"`         // quota of new non-admin users
	MemoryOvercommit   float64      `toml:"memory_overcommit"`     // VM memory ≤ host memory × this (default 1.5)
	ConsoleLogMaxBytes int64        `toml:"console_log_max_bytes"` // per VM, log + rotated log (default 4 MiB)
	MinFreeSpaceMiB    int          `toml:"min_free_space_mib"`    // doctor warns below this much free on the state filesystem (default 2048)
	Placement          string       `toml:"placement"`             // where create puts VMs among the cluster's hosts: spread (default) or binpack
	CPUOvercommit      float64      `toml:"cpu_overcommit"`        // vCPUs per host CPU the scheduler allows (default 4)
	DrainMode          string       `toml:"drain_mode"`            // how `host drain` moves VMs: memory (default), cold or live; a stopped VM moves cold

	// DNSProvider obtains one wildcard certificate *.<domain> by DNS-01
	// instead of a certificate per VM name on demand: "cloudflare" or
	// "rfc2136" ("" none). Secrets come from the value, a _file key (the
	// file's contents, trimmed) or, for Cloudflare, CLOUDFLARE_API_TOKEN
	// in the environment; see dnsprovider.go.
	DNSProvider            string `toml:"dns_provider"`
	CloudflareAPIToken     secret `toml:"cloudflare_api_token"`      // Zone.DNS:Edit on the domain's zone
	CloudflareAPITokenFile string `toml:"cloudflare_api_token_file"` //
	RFC2136Server          string `toml:"rfc2136_server"`            // host:port of the primary nameserver (TCP)
	RFC2136KeyName         string `toml:"rfc2136_key_name"`          // TSIG key name
	RFC2136KeyAlg          string `toml:"rfc2136_key_alg"`           // default hmac-sha256
	RFC2136Key             secret `toml:"rfc2136_key"`               // TSIG secret, base64
	RFC2136KeyFile         string `toml:"rfc2136_key_file"`          //

	// Jail confines each VM's QEMU and relay (own uid, mount namespace,
	// cgroup): "on" (default) or "off". Sandbox is QEMU's seccomp
	// sandbox: "on" (default: required), "auto" (when this QEMU has it)
	// or "off".
	Jail    string `toml:"jail"`
	Sandbox string `toml:"sandbox"`
	// NoWarm turns warm templates off: every create boots from the image
	// (see docs/templates.md).
	NoWarm bool `toml:"no_warm"`
	// JailUIDBase is the first per-VM uid (a VM runs as base + its vsock
	// CID; default 2000000000); JailMemoryOverheadMiB is added to a VM's
	// memory for its cgroup limit (default 256).
	JailUIDBase           uint32 `toml:"jail_uid_base"`
	JailMemoryOverheadMiB int    `toml:"jail_memory_overhead_mib"`

	// TLSCert and TLSKey (PEM files) serve the API on Bind over TLS. A
	// Bind beyond loopback needs them, or InsecureHTTP: plain HTTP on
	// purpose (e.g. behind a TLS-terminating proxy), logged as a warning.
	TLSCert      string `toml:"tls_cert"`
	TLSKey       string `toml:"tls_key"`
	InsecureHTTP bool   `toml:"insecure_http"`

	// Several hosts: see cluster.go.
	NATSURL      string `toml:"nats_url"`       // an external NATS cluster ("" : embed a server)
	NATSBind     string `toml:"nats_bind"`      // the embedded server's listener, default 127.0.0.1:4222
	NATSSeedFile string `toml:"nats_seed_file"` // the control plane's NKey seed for nats_url
	Advertise    string `toml:"advertise"`      // the address other hosts reach this one at (default public_ip)
	// ClusterSubnet is the range joined hosts' /24 subnets are carved
	// from (default 10.88.0.0/16); it must not overlap Subnet.
	ClusterSubnet string `toml:"cluster_subnet"`
}

// JailConfig is the configured VM jail, without its launcher and hidden dirs
// (the composition root adds them).
func (c *Config) JailConfig() jail.Config {
	return jail.Config{Mode: c.Jail, UIDBase: c.JailUIDBase, MemoryOverheadMiB: c.JailMemoryOverheadMiB}
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.Bind == "" {
		c.Bind = "127.0.0.1:3000"
	}
	if c.AdminBind == "" {
		c.AdminBind = "127.0.0.1:9090"
	}
	if c.SSHBind == "" {
		c.SSHBind = "0.0.0.0:2222"
	}
	if c.Policy == "" {
		c.Policy = "closed"
	}
	if c.Hypervisor == "" {
		c.Hypervisor = "auto"
	}
	if c.Jail == "" {
		c.Jail = "on"
	}
	if c.Sandbox == "" {
		c.Sandbox = "on"
	}
	if c.Subnet == "" {
		c.Subnet = network.DefaultSubnet.String()
	}
	if c.MinFreeSpaceMiB == 0 {
		c.MinFreeSpaceMiB = defaultMinFreeSpaceMiB
	}
	c.resourceDefaults()
	c.clusterDefaults()
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if _, err := netip.ParsePrefix(c.Subnet); err != nil {
		return errs.New(errs.InvalidArgument, "subnet %q: %v", c.Subnet, err)
	}
	if c.MinFreeSpaceMiB < 0 {
		return errs.New(errs.InvalidArgument, "min_free_space_mib %d: want 0 (default %d) or more", c.MinFreeSpaceMiB, defaultMinFreeSpaceMiB)
	}
	if c.Jail != "on" && c.Jail != "off" {
		return errs.New(errs.InvalidArgument, "jail %q: want on or off", c.Jail)
	}
	j := c.JailConfig()
	j.Command = []string{"minions", "jail-exec"}
	if err := j.Validate(); err != nil {
		return err
	}
	switch c.Sandbox {
	case "on", "auto", "off":
	default:
		return errs.New(errs.InvalidArgument, "sandbox %q: want on, auto or off", c.Sandbox)
	}
	switch c.Policy {
	case "open", "invite", "closed":
	default:
		return errs.New(errs.InvalidArgument, "policy %q: want open, invite or closed", c.Policy)
	}
	if c.Policy == "invite" && c.InviteCode == "" {
		return errs.New(errs.InvalidArgument, "policy invite needs invite_code")
	}
	if c.ProxyBind != "" && c.Domain == "" {
		return errs.New(errs.InvalidArgument, "proxy_bind needs a domain (without one, use http_bind for http://<vm>.localhost)")
	}
	if c.PublicIP != "" {
		if _, err := netip.ParseAddr(c.PublicIP); err != nil {
			return errs.New(errs.InvalidArgument, "public_ip %q: want an IP address", c.PublicIP)
		}
	}
	switch c.LogFormat {
	case "", "auto", "text", "json":
	default:
		return errs.New(errs.InvalidArgument, "log format %q: want auto, text or json", c.LogFormat)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errs.New(errs.InvalidArgument, "tls_cert and tls_key go together (--tls-cert and --tls-key)")
	}
	if c.ProxyBurst < 0 {
		return errs.New(errs.InvalidArgument, "proxy_burst must not be negative")
	}
	if c.DNSResolver != "" {
		if _, _, err := net.SplitHostPort(c.DNSResolver); err != nil {
			return errs.New(errs.InvalidArgument, "dns_resolver %q: want host:port", c.DNSResolver)
		}
	}
	if _, _, err := c.Egress(); err != nil {
		return err
	}
	if err := c.validateResources(); err != nil {
		return err
	}
	if err := c.validateCluster(); err != nil {
		return err
	}
	if err := c.validateDNSProvider(); err != nil {
		return err
	}
	for _, t := range c.AdminTokens {
		if len(t) < 16 {
			return errs.New(errs.InvalidArgument, "admin tokens must be at least 16 characters")
		}
	}
	return nil
}

// Egress parses DNS and EgressAllow. Errors are errs.InvalidArgument.
func (c *Config) Egress() (dns netip.Addr, allow []network.EgressRule, err error) {
	if c.DNS != "" {
		if dns, err = netip.ParseAddr(c.DNS); err != nil || !dns.Is4() {
			return dns, nil, errs.New(errs.InvalidArgument, "dns %q: want an IPv4 address", c.DNS)
		}
	}
	for _, s := range c.EgressAllow {
		r, err := network.ParseEgressRule(s)
		if err != nil {
			return dns, nil, fmt.Errorf("egress_allow: %w", err)
		}
		allow = append(allow, r)
	}
	return dns, allow, nil
}

// Load reads a TOML config file strictly: unknown keys are errors. A
// missing file is an empty config unless required.
func Load(path string, required bool) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && !required {
		return c, nil
	}
	if err != nil {
		return c, errs.New(errs.InvalidArgument, "config: %v", err)
	}
	md, err := toml.NewDecoder(bytes.NewReader(b)).Decode(&c)
	if err != nil {
		return c, errs.New(errs.InvalidArgument, "config %s: %v", path, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		var keys []string
		for _, k := range und {
			keys = append(keys, k.String())
		}
		return c, errs.New(errs.InvalidArgument, "config %s: unknown keys: %s", path, strings.Join(keys, ", "))
	}
	return c, nil
}

// TOML renders the configuration (secrets masked).
func (c Config) TOML() string {
	masked := c
	masked.AdminTokens = make([]string, len(c.AdminTokens))
	for i := range masked.AdminTokens {
		masked.AdminTokens[i] = "********"
	}
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(masked); err != nil {
		return fmt.Sprint(err)
	}
	return buf.String()
}
