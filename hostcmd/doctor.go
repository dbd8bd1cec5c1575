package hostcmd

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/announce"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/vm/hypervisor/kvm"
	"github.com/minionsdev/minions/vm/hypervisor/qemu"
	"github.com/minionsdev/minions/vm/network"
)

// check is one line of `minions doctor`.
type check struct {
	What   string `json:"what"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

func doctorCmd() *cli.Command {
	return &cli.Command{Name: "doctor", HostOnly: true, Summary: "Check this host: KVM, hypervisors, agent channel, kernel, images, network, disk, DNS",
		Usage: "[--config FILE] [--domain D] [--public-ip IP]", Flags: doctorFlags,
		Run: func(ctx context.Context, x *cli.Ctx) error {
			paths, err := local.ResolvePaths(x.G.StateDir, x.G.RunDir)
			if err != nil {
				return err
			}
			cfg, err := doctorConfig(x)
			if err != nil {
				return err
			}
			checks := append(doctor(ctx, paths), dnsCheck(cfg))
			bad := 0
			for _, c := range checks {
				if !c.OK {
					bad++
				}
			}
			err = x.Print(checks, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				for _, c := range checks {
					mark := "ok"
					if !c.OK {
						mark = "--"
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", mark, c.What, c.Detail)
				}
				tw.Flush()
			})
			if err != nil {
				return err
			}
			if bad > 0 && !x.G.JSON {
				fmt.Fprintf(x.Stderr, "%d check(s) need attention (lines marked --)\n", bad)
			}
			return nil
		}}
}

func doctor(ctx context.Context, paths local.Paths) []check {
	var out []check
	add := func(what string, ok bool, format string, args ...any) {
		out = append(out, check{What: what, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	os.MkdirAll(paths.Run, 0o700)
	choice, res, err := local.ChooseDriver(ctx, "auto", paths.Run)
	add("kvm", res.Usable, "%s", res.Reason)
	if err != nil {
		add("hypervisor", false, "%v", err)
	} else {
		add("hypervisor", true, "%s with %s: %s", choice.Driver, choice.Accel, choice.Why)
		if choice.Accel != kvm.AccelKVM {
			add("security", false, "%s", qemu.TCGWarning)
		}
	}
	cfg, cerr := config.Load(config.DefaultFile, false)
	cfg.Defaults()
	if cerr != nil {
		add("config", false, "%v", cerr)
	}
	for _, bin := range []string{"qemu-system-x86_64", "cloud-hypervisor", "qemu-img", "mkfs.ext4", "debootstrap", "busybox"} {
		p, err := exec.LookPath(bin)
		if err != nil {
			required := bin == "qemu-system-x86_64" || bin == "qemu-img" || bin == "mkfs.ext4"
			add(bin, !required, "not installed%s", map[bool]string{true: " (required: run scripts/deps.sh)", false: " (optional)"}[required])
			continue
		}
		add(bin, true, "%s %s", p, version(ctx, p))
		if bin == "qemu-system-x86_64" {
			switch err := qemu.ProbeSandbox(ctx, p); {
			case cfg.Sandbox == "off":
				add("qemu sandbox", false, "off in the config: QEMU runs without seccomp")
			case err != nil && cfg.Sandbox == "on":
				add("qemu sandbox", false, "required (sandbox = on) but unavailable, VMs cannot start: %v", err)
			case err != nil:
				add("qemu sandbox", false, "unavailable, VMs run without seccomp: %v", err)
			default:
				add("qemu sandbox", true, "on (sandbox = %s): %s", cfg.Sandbox, qemu.SandboxArgs)
			}
		}
	}
	out = append(out, jailChecks(cfg.JailConfig(), paths)...)
	if _, err := os.Stat("/dev/vhost-vsock"); err == nil {
		add("agent channel", true, "vhost-vsock (/dev/vhost-vsock)")
	} else {
		add("agent channel", true, "virtio-serial + relay (no /dev/vhost-vsock on this host)")
	}
	if relay, err := local.RelayBinary(); err != nil {
		add("agent relay", false, "%v", err)
	} else {
		add("agent relay", true, "%s", relay)
	}
	if agent, err := local.AgentBinary(); err != nil {
		add("guest agent", false, "%v", err)
	} else {
		add("guest agent", true, "%s", agent)
	}
	cat := &images.Catalog{Dir: filepath.Join(paths.State, "images")}
	if k, err := images.NewestKernel(cat.KernelDir()); err != nil {
		add("guest kernel", false, "none installed: run `minions image build --os minimal`")
	} else {
		kind := "bzImage"
		if k.Vmlinux != "" {
			kind = "vmlinux (PVH)"
		}
		add("guest kernel", true, "%s, %s", k.Version, kind)
	}
	if ims, err := cat.List(); err != nil || len(ims) == 0 {
		add("images", false, "none built: run `minions image build --os minimal`")
	} else {
		var refs []string
		for _, im := range ims {
			refs = append(refs, im.Ref())
		}
		add("images", true, "%s", strings.Join(refs, ", "))
	}
	if ref, source, derr := currentDefaultImage(ctx, paths.State); derr != nil {
		add("default image", false, "%v", derr)
	} else if im, rerr := cat.Resolve(ref); rerr != nil {
		add("default image", false, "%s (%s) is not built: run `minions image build --os %s`", ref, source, strings.SplitN(ref, "@", 2)[0])
	} else {
		add("default image", true, "%s (%s), now %s", ref, source, im.Ref())
	}
	if os.Geteuid() == 0 {
		// The network the config file asks for (as init and serve set it up).
		ncfg := network.DefaultConfig()
		if fc, err := config.Load(config.DefaultFile, false); err == nil {
			if fc.Defaults(); fc.Validate() == nil {
				o := local.OpenOptions(fc, paths, nil)
				ncfg.Subnet, ncfg.DNS, ncfg.EgressAllow = o.Subnet, o.DNS, o.EgressAllow
			}
		}
		// A joined node's network is on the subnet its join assigned.
		if cred, err := nodeagent.LoadCredential(paths.State); err == nil && cred.Subnet != "" {
			if p, err := netip.ParsePrefix(cred.Subnet); err == nil {
				ncfg.Subnet = p
			}
		}
		m, err := network.New(ncfg, nil)
		if err == nil {
			rep, err := m.Check(ctx)
			if err != nil {
				add("network", false, "%v", err)
			} else if probs := rep.Problems(); len(probs) > 0 {
				var ds []string
				for _, p := range probs {
					ds = append(ds, p.What+": "+p.Detail)
				}
				add("network", false, "%s (run `minions init`)", strings.Join(ds, "; "))
			} else {
				add("network", true, "bridge %s and nftables table %s in place", network.DefaultBridge, network.DefaultTable)
			}
		}
	} else {
		add("network", false, "%v", errs.New(errs.PermissionDenied, "run as root to check the bridge and nftables"))
	}
	out = append(out, freeSpaceCheck(paths.State, cfg.MinFreeSpaceMiB, statfs))
	out = append(out, ramChecks(local.MemoryDir(paths.State), paths)...)
	return out
}

func version(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// dnsCheck is doctor's line about the DNS records the configured domain
// needs; without --public-ip it cannot say where they point, so it asks.
func dnsCheck(cfg config.Config) check {
	if cfg.Domain == "" {
		return check{What: "dns", OK: true, Detail: "no domain: VMs are served at http://<vm>.localhost (serve --http-bind); for https://<vm>.DOMAIN serve with --domain DOMAIN --public-ip IP"}
	}
	return check{What: "dns", OK: cfg.PublicIP != "", Detail: "create " + announce.DNSAdvice(cfg.Domain, cfg.PublicIP)}
}

// doctorFlags are the serve settings doctor's advice depends on.
func doctorFlags(fs *flag.FlagSet) {
	fs.String("config", config.DefaultFile, "the daemon's config file (domain, public_ip)")
	fs.String("domain", "", "the domain serve uses (default: from the config file)")
	fs.String("public-ip", "", "this host's public address (default: from the config file)")
}

// doctorConfig is the config file overlaid with doctor's flags.
func doctorConfig(x *cli.Ctx) (config.Config, error) {
	explicit := false
	x.FS.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	cfg, err := config.Load(x.FS.Lookup("config").Value.String(), explicit)
	if err != nil {
		return cfg, err
	}
	x.FS.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "domain":
			cfg.Domain = f.Value.String()
		case "public-ip":
			cfg.PublicIP = f.Value.String()
		}
	})
	cfg.Defaults()
	return cfg, cfg.Validate()
}
