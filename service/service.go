package service

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/scheduler"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
	"golang.org/x/crypto/ssh"
)

// Config configures a Service. Zero fields take the defaults noted.
type Config struct {
	StateDir string // required: database, disks, images, keys
	RunDir   string // sockets and pid files; default StateDir/run

	Subnet  netip.Prefix // VM addresses; default network.DefaultSubnet
	Gateway netip.Addr   // default: first address of Subnet
	DNS     string       // optional nameserver handed to guests

	DefaultImage     string // default images.DefaultImage
	DefaultCPUs      int    // default 1
	DefaultMemoryMiB int    // default 512
	DefaultDiskGiB   int    // default 2

	ReadyTimeout time.Duration // boot to agent ready; default 90s (TCG is slow when loaded)
	StopTimeout  time.Duration // graceful power-off before a kill; default 15s
	MaxSnapshots int           // per VM; default 20

	// DefaultQuota is given to each new non-admin user (sign-up and
	// AddUser); zero fields are unlimited. The daemon passes its
	// [default_quota] (DefaultSignupQuota unless configured).
	DefaultQuota Quota
	// MemoryOvercommit bounds the memory of all VMs that are not stopped
	// to host memory × this ratio (creates and starts beyond it are
	// errs.ResourceExhausted). Default DefaultMemoryOvercommit (1.5).
	MemoryOvercommit float64
	// HostMemory returns the host's memory in bytes; default MemTotal
	// (/proc/meminfo). Tests set it.
	HostMemory func() (int64, error)

	// NoWarm turns warm templates off (engine.Config.NoWarm; config
	// no_warm, see docs/templates.md).
	NoWarm bool
	// BackgroundWarm lets the engine build templates in the background
	// (engine.Config.BackgroundWarm): the daemon, not the CLI.
	BackgroundWarm bool

	Log *slog.Logger
	// Placement tunes where create puts a VM when several hosts are
	// registered (policy spread or binpack, vCPU overcommit); its memory
	// ratio defaults to MemoryOvercommit. See PlaceVM.
	Placement scheduler.Config
	// DrainMode is how `host drain` moves VMs when the request names no
	// mode: "memory" (the default), "cold" or "live" (see Move). A
	// stopped VM moves cold whatever the mode.
	DrainMode string

	// OnOperation, if set, is told how long each durable operation took
	// (create, start, snapshot...) and whether it failed (for metrics).
	OnOperation func(kind string, d time.Duration, err error)
}

func (c *Config) setDefaults() {
	if c.RunDir == "" {
		c.RunDir = filepath.Join(c.StateDir, "run")
	}
	// The engine-related defaults come from the engine's own Config.
	e := c.engineConfig()
	e.SetDefaults()
	c.Subnet, c.Gateway, c.ReadyTimeout, c.StopTimeout, c.HostMemory, c.Log = e.Subnet, e.Gateway, e.ReadyTimeout, e.StopTimeout, e.HostMemory, e.Log
	if c.DefaultImage == "" {
		c.DefaultImage = images.DefaultImage
	}
	if c.DefaultCPUs == 0 {
		c.DefaultCPUs = 1
	}
	if c.DefaultMemoryMiB == 0 {
		c.DefaultMemoryMiB = 512
	}
	if c.DefaultDiskGiB == 0 {
		c.DefaultDiskGiB = 2
	}
	if c.MaxSnapshots == 0 {
		c.MaxSnapshots = 20
	}
	if c.MemoryOvercommit == 0 {
		c.MemoryOvercommit = DefaultMemoryOvercommit
	}
	if c.DrainMode == "" {
		c.DrainMode = DefaultDrainMode
	}
}

// Validate checks the configuration (the engine's part by the engine's
// Config.Validate).
func (c *Config) Validate() error {
	e := c.engineConfig()
	if err := e.Validate(); err != nil {
		return err
	}
	if c.MemoryOvercommit < 0 || c.MemoryOvercommit > 100 {
		return errs.New(errs.InvalidArgument, "memory overcommit %g: want a ratio above 0 (1 = no overcommit)", c.MemoryOvercommit)
	}
	if err := c.Placement.Validate(); err != nil {
		return fmt.Errorf("placement: %w", err)
	}
	if c.DrainMode != "" {
		if _, err := moveMode(c.DrainMode); err != nil {
			return fmt.Errorf("drain mode: %w", err)
		}
	}
	if err := c.DefaultQuota.Validate(); err != nil {
		return fmt.Errorf("default quota: %w", err)
	}
	return nil
}

// Network is the host networking the local engine needs (vm/network).
type Network = engine.Network

// Image is a bootable root filesystem from the catalogue.
type Image = engine.Image

// Images resolves image references (images/).
type Images = engine.Images

// Disks makes and changes VM disks (vm/disk).
type Disks = engine.Disks

// Deps are the subsystems a Service drives.
type Deps struct {
	DB *store.DB
	// Engine runs the VMs. When nil, New builds the local engine of this
	// host from Driver, Network, Images, Disks and HostKey (with the
	// directories, subnet and timeouts of Config).
	Engine engine.Engine
	// Images is the image catalogue (defaults, listing, building).
	Images Images
	// HostKey is the key the host presents to every guest agent.
	HostKey ssh.Signer

	// For the local engine built by New when Engine is nil.
	Driver  hypervisor.Driver
	Network Network
	Disks   Disks
}

// Service is the façade. See the package doc for its concurrency contract.
type Service struct {
	cfg Config
	Deps
	log *slog.Logger
	web webHolder // see SetWeb

	challenges challenges // outstanding key proofs, see SSHKeyChallenge

	creds credWatch // see BindCredential

	hostAgent hostAgent // see SetHostAgentVersion

	hosts hostsState // see SetHosts (hosts.go)

	remotes remoteHosts // other hosts' engines, see SetRemoteEngine (route.go)

	moving moveSet // VMs being moved now (move.go)
}

// New returns a Service.
func New(cfg Config, deps Deps) (*Service, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.DB == nil || deps.Images == nil {
		return nil, fmt.Errorf("service: missing dependency")
	}
	if deps.Engine == nil {
		l, err := engine.NewLocal(cfg.EngineConfig(), engine.Deps{DB: deps.DB, Driver: deps.Driver, Network: deps.Network,
			Images: deps.Images, Disks: deps.Disks, HostKey: deps.HostKey})
		if err != nil {
			return nil, err
		}
		deps.Engine = l
	}
	for _, d := range []string{cfg.StateDir, cfg.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	s := &Service{cfg: cfg, Deps: deps, log: cfg.Log.With("component", "service")}
	if a, ok := deps.Engine.(interface{ SetAdmit(engine.AdmitFunc) }); ok {
		a.SetAdmit(s.admit)
	}
	deps.Engine.OnExit(s.wentDown)
	return s, nil
}

// EngineConfig is the configuration of the local engine that matches c
// (for the daemon, which builds the engine itself).
func (c Config) EngineConfig() engine.Config {
	c.setDefaults()
	return c.engineConfig()
}

// engineConfig is c's engine part as it stands (no defaults filled in).
func (c Config) engineConfig() engine.Config {
	return engine.Config{StateDir: c.StateDir, RunDir: c.RunDir, Subnet: c.Subnet, Gateway: c.Gateway, DNS: c.DNS,
		ReadyTimeout: c.ReadyTimeout, StopTimeout: c.StopTimeout, HostMemory: c.HostMemory, Log: c.Log, OnOperation: c.OnOperation,
		NoWarm: c.NoWarm, BackgroundWarm: c.BackgroundWarm}
}

// Config returns the effective configuration.
func (s *Service) Config() Config { return s.cfg }

// Caller is who is asking. Every method checks it.
type Caller struct {
	UserID string
	Name   string
	Admin  bool
	Cred   Credential // what authenticated the caller (see BindCredential)
}

func (c Caller) String() string { return c.Name }

// canSee reports whether c may see and act on v. Others' VMs are reported
// as not found, never as forbidden, so names do not leak.
func (c Caller) canSee(v store.VM) bool { return c.Admin || (c.UserID != "" && v.OwnerID == c.UserID) }

// getVM loads a VM the caller may act on, by ID or by name. The two
// lookups are separate: a string of the form of an ID (vm.IsID) is first
// looked up as an ID among the VMs the caller may see, and only then as a
// name, so a VM named after another VM's ID (possible only for rows older
// than vm.ValidName's rule) never stands in for that VM.
func (s *Service) getVM(ctx context.Context, c Caller, name string) (store.VM, error) {
	if name == "" {
		return store.VM{}, errs.New(errs.InvalidArgument, "vm name is required")
	}
	if vm.IsID(name) {
		if v, err := store.GetVMByID(ctx, s.DB, name); err == nil && c.canSee(v) {
			return v, nil
		}
	}
	v, err := store.GetVMByName(ctx, s.DB, name)
	if err != nil || !c.canSee(v) {
		return store.VM{}, errs.New(errs.NotFound, "no vm named %q", name)
	}
	return v, nil
}

// reloadVM reads v again by its ID (after taking its lock, say) and checks
// that it still belongs to the owner it had: errs.NotFound if it is gone or
// is no longer the same owner's VM.
func (s *Service) reloadVM(ctx context.Context, v store.VM) (store.VM, error) {
	cur, err := store.GetVMByID(ctx, s.DB, v.ID)
	if err != nil {
		return store.VM{}, err
	}
	if cur.OwnerID != v.OwnerID {
		return store.VM{}, errs.New(errs.NotFound, "vm %s changed owner", v.ID)
	}
	return cur, nil
}

// VM is the public view of a VM.
type VM struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Owner     string    `json:"owner"`
	Status    string    `json:"status"`
	Image     string    `json:"image"`
	IP        string    `json:"ip"`
	MAC       string    `json:"mac"`
	CPUs      int       `json:"cpus"`
	MemoryMiB int       `json:"memory_mib"`
	DiskGiB   int       `json:"disk_gib"`
	PID       int       `json:"pid,omitempty"`
	Port      int       `json:"port"`
	Public    bool      `json:"public"`
	CreatedAt time.Time `json:"created_at"`
	StartedAt time.Time `json:"started_at,omitzero"`
	// Note says what Status cannot, e.g. store.NoteDiskMissing.
	Note     string `json:"note,omitempty"`
	Restart  string `json:"restart,omitempty"`  // restart policy (see SetRestartPolicy)
	Restarts int    `json:"restarts,omitempty"` // automatic restarts so far
	// Boot says how create started the VM: "warm" (restored from a warm
	// template) or "cold" (booted from the image). Create's result only.
	Boot string `json:"boot,omitempty"`
	// Warnings are what create wants the user to know (a warm template
	// that failed, say). Create's result only.
	Warnings []string `json:"warnings,omitempty"`
	// Move is a move's figures (Move's result only).
	Move *MoveStats `json:"move,omitempty"`
	// Host is the name of the host the VM runs on ("" when no host is
	// registered: a single host without the cluster).
	Host string `json:"host,omitempty"`
	// Transfer is what a move or a copy onto another host shipped. Their
	// results only.
	Transfer *Transfer `json:"transfer,omitempty"`
	hostID   string    // vms.host_id ("" : this host)
}

func view(v store.VM) VM {
	out := VM{ID: v.ID, Name: v.Name, Owner: v.Owner, Status: string(v.State), Image: v.Image, IP: v.IP, MAC: v.MAC,
		CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskGiB: v.DiskGiB, Port: v.Port, Public: v.Public, CreatedAt: v.CreatedAt, Note: v.Note,
		hostID: v.HostID}
	if v.HostID != "" && v.IP == "@"+v.ID {
		// On another host: its address is the node's (the unique columns
		// hold placeholders, see store.RemotePlaceholders).
		out.IP, out.MAC = v.NodeIP, v.NodeMAC
	}
	if v.State == vm.Running || v.State == vm.Paused {
		if h, err := engine.DecodeHandle(v.Handle); err == nil && h != nil {
			out.PID = h.PID
		}
		out.StartedAt = v.StartedAt
	}
	return out
}
