package config

import (
	"flag"
	"strings"
)

// ServeFlags registers the flags of `minions serve`, each overriding the
// config key of the same name (see Effective).
func ServeFlags(fs *flag.FlagSet) {
	fs.String("config", DefaultFile, "config file (TOML; unknown keys are errors)")
	fs.String("bind", "", "HTTP API on TCP (default 127.0.0.1:3000); beyond loopback it needs --tls-cert/--tls-key or --insecure-http")
	fs.String("tls-cert", "", "PEM certificate (chain) for the API on --bind (clients may trust a private CA with SSL_CERT_FILE)")
	fs.String("tls-key", "", "PEM private key for --tls-cert")
	fs.Bool("insecure-http", false, "allow the API in plain HTTP beyond loopback (tokens cross the network in clear)")
	fs.String("admin-bind", "", "metrics listener (default 127.0.0.1:9090)")
	fs.String("ssh-bind", "", "SSH front door (default 0.0.0.0:2222)")
	fs.String("proxy-bind", "", "HTTPS proxy, e.g. 0.0.0.0:443")
	fs.String("http-bind", "", "HTTP (ACME HTTP-01 and redirects; the whole proxy without --domain)")
	fs.String("domain", "", "serve VMs at https://<vm>.<domain>")
	fs.String("public-ip", "", "this host's public address (for DNS instructions)")
	fs.String("acme-email", "", "ACME account email")
	fs.String("acme-ca", "", "ACME directory URL")
	fs.Bool("acme-staging", false, "use Let's Encrypt's staging CA")
	fs.String("acme-root", "", "PEM root of a private ACME CA")
	fs.String("hypervisor", "", "auto, qemu, qemu-kvm, qemu-tcg or cloud-hypervisor")
	fs.String("policy", "", "SSH sign-up policy: open, invite or closed")
	fs.String("invite-code", "", "invite code for policy invite")
	fs.String("dns", "", "nameserver (IPv4) handed to vms; they may reach it on port 53")
	fs.String("egress-allow", "", `private destinations vms may reach, comma-separated "PREFIX[ tcp|udp[/PORT]]" (replaces the file's list)`)
	fs.String("log-format", "", "auto (text on a terminal, JSON otherwise; JSON with --json), text or json")
	ClusterFlags(fs)
	DNSProviderFlags(fs)
}

// Effective is the config file fs's "config" flag names (required only
// when that flag was given) overlaid with the flags set in fs (those of
// ServeFlags, or any subset of them) and the state and run directories
// ("" keeps the file's), with defaults filled in and validated.
func Effective(fs *flag.FlagSet, stateDir, runDir string) (Config, error) {
	path := fs.Lookup("config").Value.String()
	explicit := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "config" {
			explicit = true
		}
	})
	cfg, err := Load(path, explicit)
	if err != nil {
		return cfg, err
	}
	if stateDir != "" {
		cfg.StateDir = stateDir
	}
	if runDir != "" {
		cfg.RunDir = runDir
	}
	fs.Visit(func(f *flag.Flag) {
		v := f.Value.String()
		switch f.Name {
		case "bind":
			cfg.Bind = v
		case "admin-bind":
			cfg.AdminBind = v
		case "tls-cert":
			cfg.TLSCert = v
		case "tls-key":
			cfg.TLSKey = v
		case "insecure-http":
			cfg.InsecureHTTP = v == "true"
		case "ssh-bind":
			cfg.SSHBind = v
		case "proxy-bind":
			cfg.ProxyBind = v
		case "http-bind":
			cfg.HTTPBind = v
		case "domain":
			cfg.Domain = v
		case "public-ip":
			cfg.PublicIP = v
		case "acme-email":
			cfg.ACMEEmail = v
		case "acme-ca":
			cfg.ACMECA = v
		case "acme-staging":
			cfg.ACMEStaging = v == "true"
		case "acme-root":
			cfg.ACMERoot = v
		case "hypervisor":
			cfg.Hypervisor = v
		case "policy":
			cfg.Policy = v
		case "invite-code":
			cfg.InviteCode = v
		case "dns":
			cfg.DNS = v
		case "egress-allow":
			cfg.EgressAllow = nil
			for _, r := range strings.Split(v, ",") {
				if r = strings.TrimSpace(r); r != "" {
					cfg.EgressAllow = append(cfg.EgressAllow, r)
				}
			}
		case "log-format":
			cfg.LogFormat = v
		}
	})
	fs.Visit(func(f *flag.Flag) { cfg.SetDNSProviderFlag(f.Name, f.Value.String()) })
	fs.Visit(func(f *flag.Flag) { cfg.setClusterFlag(f.Name, f.Value.String()) })
	cfg.Defaults()
	return cfg, cfg.Validate()
}
