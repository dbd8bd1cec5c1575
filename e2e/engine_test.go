package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/engine/enginetest"
	"github.com/minionsdev/minions/vm/hypervisor/qemu"
	"github.com/minionsdev/minions/vm/jail"
	"github.com/minionsdev/minions/vm/network"
)

// catalogImages resolves images from the test installation's catalogue
// with the newest kernel and an initramfs around this build's agent.
type catalogImages struct {
	cat   *images.Catalog
	agent string
}

func (c catalogImages) Resolve(ctx context.Context, ref string) (engine.Image, error) {
	im, err := c.cat.Resolve(ref)
	if err != nil {
		return engine.Image{}, err
	}
	k, err := images.NewestKernel(c.cat.KernelDir())
	if err != nil {
		return engine.Image{}, err
	}
	initrd, err := c.cat.Initramfs(ctx, k, c.agent)
	if err != nil {
		return engine.Image{}, err
	}
	return engine.Image{Ref: im.Ref(), OS: im.OS, Path: im.Path, Format: "raw", SizeBytes: im.SizeBytes, Kernel: k.Path, Initramfs: initrd.Path}, nil
}

// netPorts is vm/network's Manager as engine.Network.
type netPorts struct{ m *network.Manager }

func (n netPorts) AddPort(ctx context.Context, tap string, ip netip.Addr, mac string) error {
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return err
	}
	return n.m.AddPort(ctx, network.Port{TAP: tap, IP: ip, MAC: hw})
}

func (n netPorts) RemovePort(ctx context.Context, tap string) error { return n.m.RemovePort(ctx, tap) }

// TestEngineConformanceQEMU runs the engine conformance suite
// (vm/engine/enginetest) against the local engine on QEMU with real
// guests: the test installation's minimal image, its own bridge, nftables
// table and subnet, the real agent relay and console logger.
func TestEngineConformanceQEMU(t *testing.T) {
	needVMs(t)
	enginetest.Run(t, func(t *testing.T) enginetest.Harness {
		ctx := context.Background()
		dir, err := os.MkdirTemp(filepath.Dir(stateDir), "eng")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		owner := store.User{ID: "u1", Name: "alice", CreatedAt: time.Now()}
		if err := store.InsertUser(ctx, db, owner); err != nil {
			t.Fatal(err)
		}
		nm, err := network.New(network.Config{Bridge: "mneng0", Subnet: netip.MustParsePrefix("10.215.0.0/24"), Table: "mneng"}, log)
		if err != nil {
			t.Fatal(err)
		}
		if err := nm.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nm.Teardown(context.Background()) })
		exe := filepath.Join(binDir, "minions-relay") // agent relay and console logger
		drv, err := qemu.New(qemu.Config{Accel: qemu.AccelTCG, RelayCommand: []string{exe, "agent-relay"},
			ConsoleCommand: []string{exe, "console-log"}, Jail: jail.Config{Mode: "off"}, Log: log,
			MemoryDir: local.MemoryDir(dir)})
		noteInstallation(dir, "") // its ram files are checked at the end (ramdir_test.go)
		if err != nil {
			t.Fatal(err)
		}
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		key, _ := ssh.NewSignerFromKey(priv)
		imgs := catalogImages{cat: &images.Catalog{Dir: filepath.Join(stateDir, "images"), Log: log}, agent: filepath.Join(binDir, "minions-agent")}
		l, err := engine.NewLocal(engine.Config{StateDir: dir, RunDir: filepath.Join(dir, "run"), Subnet: nm.Config().Subnet,
			ReadyTimeout: 2 * time.Minute, StopTimeout: 10 * time.Second, Log: log},
			engine.Deps{DB: db, Driver: drv, Network: netPorts{nm}, Images: imgs, Disks: engine.HostDisks{}, HostKey: key})
		if err != nil {
			t.Fatal(err)
		}
		return enginetest.Harness{
			Engine: l, Image: "minimal", Owner: owner.ID, RealGuest: true, Timeout: 8 * time.Minute,
			Leaks: func(t *testing.T, id string) []string {
				var left []string
				for _, p := range []string{l.VMDir(id), l.RunDir(id)} {
					if _, err := os.Stat(p); err == nil {
						left = append(left, p)
					}
				}
				if tap, _ := network.TAPName(id); tap != "" {
					if _, err := os.Stat("/sys/class/net/" + tap); err == nil {
						left = append(left, "tap "+tap)
					}
				}
				files, _ := filepath.Glob("/proc/[0-9]*/cmdline")
				for _, f := range files {
					if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), l.RunDir(id)) {
						left = append(left, "process "+strings.ReplaceAll(string(b), "\x00", " "))
					}
				}
				if _, err := store.GetVMByID(ctx, db, id); err == nil {
					left = append(left, "vm row")
				}
				// Its RAM file on the tmpfs (a second name of it is
				// found at the end of the run: ramdir_test.go).
				if p := filepath.Join(local.MemoryDir(dir), id+".ram"); pathExists(p) {
					left = append(left, p)
				}
				return left
			},
		}
	})
}
