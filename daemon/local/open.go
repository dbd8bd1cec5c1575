package local

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"debug/elf"
	"encoding/pem"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/internal/starttrace"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/jail"
	"github.com/minionsdev/minions/vm/network"
	"golang.org/x/crypto/ssh"
)

// Paths are where an installation keeps its files.
type Paths struct {
	State string // database, disks, images, keys
	Run   string // sockets and pid files
}

// DefaultStateDir is the state directory when neither --state-dir nor
// MINIONS_STATE_DIR says otherwise.
const DefaultStateDir = "/var/lib/minions"

// ResolvePaths applies the defaults: state in /var/lib/minions with
// runtime files in /run/minions, or, for a custom state directory,
// runtime files in <state>/run (so installs never collide).
func ResolvePaths(state, run string) (Paths, error) {
	p := Paths{State: state, Run: run}
	if p.State == "" {
		p.State = DefaultStateDir
		if p.Run == "" {
			p.Run = "/run/minions"
		}
	}
	if p.Run == "" {
		p.Run = filepath.Join(p.State, "run")
	}
	var err error
	if p.State, err = filepath.Abs(p.State); err != nil {
		return p, err
	}
	if p.Run, err = filepath.Abs(p.Run); err != nil {
		return p, err
	}
	return p, nil
}

// Options configure Open.
type Options struct {
	Paths        Paths
	Subnet       netip.Prefix // default network.DefaultSubnet
	Bridge       string       // default network.DefaultBridge
	Hypervisor   string       // "auto" (default), "qemu", "cloud-hypervisor"
	Jail         jail.Config  // mode, uid base, overhead (see config.Config.Jail); Open adds the launcher and hidden dirs
	Sandbox      string       // "on" (default), "auto" or "off": see config.Config.Sandbox
	DefaultImage string       // image create uses without one (default images.DefaultImage)
	// DNS is the nameserver handed to guests (zero: none); EgressAllow
	// opens private destinations to VMs (see network.Config).
	DNS         netip.Addr
	EgressAllow []network.EgressRule
	Resources   config.Resources // quotas, overcommit, console cap (config.Config.Resources)
	// NoWarm turns warm templates off (config no_warm). BackgroundWarm
	// lets the engine build templates in the background (serve).
	NoWarm, BackgroundWarm bool
	// Web, when set, is the service's web proxy (service.SetWeb); without
	// it web links and domain checks answer errs.FailedPrecondition.
	Web WebFunc
	// OnOperation receives each durable operation's duration (metrics).
	OnOperation func(kind string, d time.Duration, err error)
	Log         *slog.Logger
}

// WebFunc builds the web proxy of an installation's service (the daemon's
// storedWeb: the proxy `minions serve` recorded).
type WebFunc func(svc *service.Service, paths Paths, log *slog.Logger) service.WebSource

// Installation is an opened installation (state and run directories, database,
// network, driver) and the service built on it. It is not cli.Env, which is
// where one command runs (streams and how it reaches Minions).
type Installation struct {
	Opts    Options
	DB      *store.DB
	Images  *images.Catalog
	Network *network.Manager
	Driver  hypervisor.Driver
	Engine  *engine.Local
	Service *service.Service
}

// Close closes the pooled agent connections and the database.
func (e *Installation) Close() error {
	if e.Engine != nil {
		e.Engine.Close()
	}
	return e.DB.Close()
}

// OpenOptions are the Options cfg (validated) asks for.
func OpenOptions(cfg config.Config, paths Paths, log *slog.Logger) Options {
	subnet, _ := netip.ParsePrefix(cfg.Subnet)
	dns, allow, _ := cfg.Egress()
	return Options{Paths: paths, Subnet: subnet, Hypervisor: cfg.Hypervisor, Jail: cfg.JailConfig(), Sandbox: cfg.Sandbox,
		DefaultImage: cfg.DefaultImage, DNS: dns, EgressAllow: allow, Resources: cfg.Resources(), NoWarm: cfg.NoWarm, Log: log}
}

// Open builds the service for an installation. It needs root (TAPs,
// nftables, /dev/kvm); it does not change host networking (that is Init).
func Open(ctx context.Context, o Options) (*Installation, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if !o.Subnet.IsValid() {
		o.Subnet = network.DefaultSubnet
	}
	if os.Geteuid() != 0 {
		return nil, errs.New(errs.PermissionDenied, "managing vms on this host needs root: run with sudo, or point --host at a minions daemon")
	}
	for _, d := range []string{o.Paths.State, o.Paths.Run} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("create %s: %w", d, err)
		}
	}
	// Users with a token reach the daemon's socket in the run directory:
	// they may pass through it (0711), not list it; every VM's own
	// directory in it stays 0700.
	if err := os.Chmod(o.Paths.Run, 0o711); err != nil {
		return nil, err
	}
	if err := lockDownState(o.Paths); err != nil {
		return nil, err
	}
	starttrace.Mark("open: state dirs")
	db, err := store.Open(ctx, filepath.Join(o.Paths.State, "minions.db"))
	if err != nil {
		return nil, err
	}
	starttrace.Mark("open: store")
	e := &Installation{Opts: o, DB: db}
	ok := false
	defer func() {
		if !ok {
			db.Close()
		}
	}()
	key, err := LoadOrCreateKey(filepath.Join(o.Paths.State, "keys", "agent_ed25519"))
	if err != nil {
		return nil, err
	}
	e.Images = &images.Catalog{Dir: filepath.Join(o.Paths.State, "images"), Log: o.Log}
	ncfg := network.DefaultConfig()
	ncfg.Subnet = o.Subnet
	if o.Bridge != "" {
		ncfg.Bridge = o.Bridge
	}
	ncfg.DNS, ncfg.EgressAllow = o.DNS, o.EgressAllow
	var dns string
	if o.DNS.IsValid() {
		dns = o.DNS.String()
	}
	if e.Network, err = network.New(ncfg, o.Log); err != nil {
		return nil, err
	}
	starttrace.Mark("open: key, network")
	if e.Driver, err = newDriver(ctx, o); err != nil {
		return nil, err
	}
	starttrace.Mark("open: driver")
	scfg := service.Config{StateDir: o.Paths.State, RunDir: o.Paths.Run, Subnet: o.Subnet, DNS: dns, DefaultImage: o.DefaultImage,
		DefaultQuota: o.Resources.DefaultQuota, MemoryOvercommit: o.Resources.MemoryOvercommit, Placement: o.Resources.Placement, DrainMode: o.Resources.DrainMode, OnOperation: o.OnOperation, Log: o.Log,
		NoWarm: o.NoWarm, BackgroundWarm: o.BackgroundWarm}
	images := service.NewHostCatalog(e.Images, AgentBinary)
	if e.Engine, err = engine.NewLocal(scfg.EngineConfig(), engine.Deps{
		DB: db, Driver: e.Driver, Network: engine.HostNetwork{M: e.Network}, Images: images, Disks: engine.HostDisks{}, HostKey: key,
	}); err != nil {
		return nil, err
	}
	e.Service, err = service.New(scfg, service.Deps{DB: db, Engine: e.Engine, Images: images, HostKey: key})
	if err != nil {
		return nil, err
	}
	if o.Web != nil {
		e.Service.SetWeb(o.Web(e.Service, o.Paths, o.Log)) // serve replaces it with its live proxy
	}
	// Found when first needed (agent status): running the agent binary
	// costs every CLI command an exec.
	e.Service.SetHostAgentVersionFunc(func() string {
		p, err := AgentBinary()
		if err != nil {
			return ""
		}
		return agentVersion(context.WithoutCancel(ctx), p)
	})
	ok = true
	return e, nil
}

// lockDownState keeps the state dir (the store with users, tokens and the
// proxy secret, the keys, every VM's disks) from the VMs' unprivileged
// uids and other users: the dir is 0700 (0711 when the run dir is inside
// it, so token users reach the daemon's socket) and the store's files are
// 0600 (SQLite creates them 0644; an empty file is an empty database, and
// SQLite gives its -wal and -shm files the database's mode).
func lockDownState(p Paths) error {
	mode := os.FileMode(0o700)
	if rel, err := filepath.Rel(p.State, p.Run); err == nil && !strings.HasPrefix(rel, "..") {
		mode = 0o711
	}
	if err := os.Chmod(p.State, mode); err != nil {
		return err
	}
	db := filepath.Join(p.State, "minions.db")
	f, err := os.OpenFile(db, os.O_RDONLY|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	f.Close()
	for _, name := range []string{db, db + "-wal", db + "-shm"} {
		if err := os.Chmod(name, 0o600); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	return nil
}

// LoadOrCreateKey loads an OpenSSH ed25519 private key, creating it (0600)
// when absent.
func LoadOrCreateKey(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		blk, err := ssh.MarshalPrivateKey(priv, "minions")
		if err != nil {
			return nil, err
		}
		b = pem.EncodeToMemory(blk)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return nil, err
		}
		if err := os.Link(tmp, path); err != nil && !os.IsExist(err) {
			os.Remove(tmp)
			return nil, err
		}
		os.Remove(tmp)
		if b, err = os.ReadFile(path); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	return ssh.ParsePrivateKey(b)
}

// AgentBinary finds the guest agent binary: $MINIONS_AGENT_BIN, then
// minions-agent beside this executable, then in ../lib/minions from it
// (where install.sh and `make install` put it for any prefix), then
// /usr/local/lib/minions.
func AgentBinary() (string, error) {
	p, tried := findHelper("minions-agent", "MINIONS_AGENT_BIN")
	if p == "" {
		return "", errs.New(errs.FailedPrecondition, "guest agent binary not found (looked at %v): build it with `make` or set MINIONS_AGENT_BIN", tried)
	}
	return p, staticBinary(p)
}

// staticBinary checks that the agent can run as /init of an initramfs that
// has no dynamic loader.
func staticBinary(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return errs.New(errs.FailedPrecondition, "guest agent %s is not an executable: %v", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errs.New(errs.FailedPrecondition, "guest agent %s is dynamically linked and cannot run in the guest: build it with CGO_ENABLED=0 (`make build`)", path)
		}
	}
	return nil
}

// OpenImages opens this host's installation for the image commands only
// (list, build, rm, default): the store and the image catalogue behind
// the service, bound to root, with no hypervisor, network or VM engine
// (engine.Absent). It works before the host has a hypervisor and beside
// a running daemon (the store is shared). Needs root.
func OpenImages(ctx context.Context, g *cli.Global) (service.Backend, error) {
	if os.Geteuid() != 0 {
		return nil, errs.New(errs.PermissionDenied, "managing this host's images needs root: run with sudo, or point --host at a minions daemon")
	}
	cfg, paths, err := loadConfig(g)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(paths.State, 0o700); err != nil {
		return nil, err
	}
	db, err := store.Open(ctx, filepath.Join(paths.State, "minions.db"))
	if err != nil {
		return nil, err
	}
	log := CLILogger()
	cat := service.NewHostCatalog(&images.Catalog{Dir: filepath.Join(paths.State, "images"), Log: log}, AgentBinary)
	svc, err := service.New(service.Config{StateDir: paths.State, RunDir: paths.Run, DefaultImage: cfg.DefaultImage, Log: log},
		service.Deps{DB: db, Engine: engine.Absent{Reason: "image commands open only the store and the catalogue"}, Images: cat})
	if err != nil {
		db.Close()
		return nil, err
	}
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		db.Close()
		return nil, err
	}
	return svc.As(root).OnClose(db.Close), nil
}
