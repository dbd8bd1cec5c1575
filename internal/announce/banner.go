package announce

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Banner is what `serve` says once its listeners are up: how to reach each
// front door and where its files are. Addresses are the bound ones (so a
// port 0 shows the port chosen), with host names people can type.
type Banner struct {
	Version   string `json:"version"`
	Host      string `json:"host"`                // --public-ip, else the SSH bind address or this host's name
	Dashboard string `json:"dashboard,omitempty"` // ssh command for the dashboard
	VMShell   string `json:"vm_shell,omitempty"`  // ssh command for a VM's shell
	API       string `json:"api,omitempty"`       // HTTP API on TCP
	APISocket string `json:"api_socket"`          // HTTP API on the root-only unix socket
	Proxy     string `json:"proxy,omitempty"`     // a VM's web address, VM standing for its name
	DNS       string `json:"dns,omitempty"`       // the DNS records a domain needs
	Metrics   string `json:"metrics,omitempty"`
	StateDir  string `json:"state_dir"`
	RunDir    string `json:"run_dir"`
	Logs      string `json:"logs"`
	Warning   string `json:"warning,omitempty"`
}

// Input is what the banner is made of; empty addresses are
// listeners that are off.
type Input struct {
	Version  string
	PublicIP string
	SSH      string // bound SSH front door
	API      string // bound HTTP API (TCP)
	APITLS   bool   // the API on TCP is served over TLS
	Socket   string
	Metrics  string
	Proxy    Proxy
	StateDir string
	RunDir   string
	KVM      bool
	Systemd  bool // running as a systemd service (logs in the journal)
}

func NewBanner(in Input) Banner {
	b := Banner{Version: in.Version, APISocket: in.Socket, StateDir: in.StateDir, RunDir: in.RunDir}
	b.Host = publicHost(in.PublicIP, in.SSH)
	if in.SSH != "" {
		_, port, _ := net.SplitHostPort(in.SSH)
		b.Dashboard = sshCommand("", b.Host, port)
		b.VMShell = sshCommand("VM", b.Host, port)
	}
	if in.API != "" {
		scheme := "http://"
		if in.APITLS {
			scheme = "https://"
		}
		b.API = scheme + reachable(in.API, b.Host)
	}
	if in.Metrics != "" {
		b.Metrics = "http://" + reachable(in.Metrics, b.Host) + "/metrics"
	}
	switch {
	case in.Proxy.Domain != "":
		b.Proxy = "https://VM." + in.Proxy.Domain
		if in.Proxy.HTTPSPort != 0 && in.Proxy.HTTPSPort != 443 {
			b.Proxy += ":" + strconv.Itoa(in.Proxy.HTTPSPort)
		}
		b.DNS = DNSAdvice(in.Proxy.Domain, in.PublicIP)
	case in.Proxy.HTTPPort != 0:
		b.Proxy = "http://VM.localhost:" + strconv.Itoa(in.Proxy.HTTPPort)
	}
	b.Logs = "stderr"
	if in.Systemd {
		b.Logs = "journalctl -u minions"
	}
	if !in.KVM {
		b.Warning = "KVM is not usable here: VMs run under QEMU's TCG emulation, which is slow and is not a security boundary"
	}
	return b
}

// publicHost is the host name users type: the public IP when given, else
// the bind address when it is a specific one, else this host's name.
func publicHost(publicIP, bind string) string {
	if publicIP != "" {
		return publicIP
	}
	if h, _, err := net.SplitHostPort(bind); err == nil && h != "" {
		if ip := net.ParseIP(h); ip == nil || !ip.IsUnspecified() {
			return h
		}
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "localhost"
}

// reachable is addr with an unspecified host (0.0.0.0, ::) replaced by
// host.
func reachable(addr, host string) string {
	h, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(h); h == "" || (ip != nil && ip.IsUnspecified()) {
		h = host
	}
	return net.JoinHostPort(h, port)
}

func sshCommand(user, host, port string) string {
	s := "ssh "
	if port != "" && port != "22" {
		s += "-p " + port + " "
	}
	if user != "" {
		s += user + "@"
	}
	return s + host
}

// print writes the banner for people: one line per address.
func (b Banner) print(w io.Writer) {
	fmt.Fprintf(w, "\nMinions %s is ready.\n", b.Version)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	line := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "  %s\t%s\n", k, v)
		}
	}
	line("dashboard", b.Dashboard)
	line("VM shell", b.VMShell)
	api := b.API
	if api != "" {
		api += " (and the unix socket " + b.APISocket + ")"
	} else {
		api = "unix socket " + b.APISocket
	}
	line("HTTP API", api)
	if b.Proxy == "" {
		line("web proxy", "off (--http-bind ADDR for http://VM.localhost, or --domain D)")
	}
	line("web proxy", b.Proxy)
	line("DNS", b.DNS)
	line("metrics", b.Metrics)
	line("state", b.StateDir)
	line("runtime", b.RunDir)
	line("logs", b.Logs+"; a VM's console: minions logs VM")
	tw.Flush()
	if b.Warning != "" {
		fmt.Fprintf(w, "  warning: %s\n", b.Warning)
	}
	fmt.Fprintln(w)
}

// attrs are the banner as one structured log record's attributes.
func (b Banner) attrs() []any {
	kv := []any{"version", b.Version, "host", b.Host, "api_socket", b.APISocket, "state_dir", b.StateDir, "run_dir", b.RunDir, "logs", b.Logs}
	for _, f := range []struct{ k, v string }{{"dashboard", b.Dashboard}, {"vm_shell", b.VMShell}, {"api", b.API},
		{"proxy", b.Proxy}, {"dns", b.DNS}, {"metrics", b.Metrics}, {"warning", b.Warning}} {
		if f.v != "" {
			kv = append(kv, f.k, f.v)
		}
	}
	return kv
}

// Announce prints the banner on a text log, or logs it as one record.
func (b Banner) Announce(log *slog.Logger, w io.Writer, format string) {
	if format == LogText {
		var sb strings.Builder
		b.print(&sb)
		io.WriteString(w, sb.String())
		return
	}
	log.Info("minions ready", b.attrs()...)
}

// DNSAdvice says which DNS records make https://<vm>.<domain> reach this
// host: A (or AAAA) records for the domain and its wildcard.
func DNSAdvice(domain, publicIP string) string {
	rec, target := "A", "this host's public IP (pass --public-ip to see it here)"
	if publicIP != "" {
		target = publicIP
		if strings.Contains(publicIP, ":") {
			rec = "AAAA"
		}
	}
	return fmt.Sprintf("%s records %s and *.%s -> %s", rec, domain, domain, target)
}

// Proxy is the web proxy's public endpoint as the banner shows it.
type Proxy struct {
	Domain    string // "": local mode (<vm>.localhost)
	HTTPSPort int
	HTTPPort  int
}
