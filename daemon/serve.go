package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/cli"
	"github.com/minionsdev/minions/config"
	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/internal/announce"
	"github.com/minionsdev/minions/internal/cpus"
	"github.com/minionsdev/minions/internal/tick"
	"github.com/minionsdev/minions/metrics"
	"github.com/minionsdev/minions/vm/hypervisor/qemu"
	"golang.org/x/sync/errgroup"
)

func serveCmd() *cli.Command {
	return &cli.Command{Name: "serve", HostOnly: true, Summary: "Run the daemon: HTTP API, SSH front door, HTTPS proxy, reconcile loop",
		Usage: "[--config FILE] [--bind ADDR] [--ssh-bind ADDR] [--proxy-bind ADDR --http-bind ADDR --domain D --acme-email E]",
		Flags: config.ServeFlags,
		Run: func(ctx context.Context, x *cli.Ctx) error {
			cfg, err := effectiveConfig(x)
			if err != nil {
				return err
			}
			if x.G.JSON && (cfg.LogFormat == "" || cfg.LogFormat == announce.LogAuto) {
				cfg.LogFormat = announce.LogJSON
			}
			return Serve(ctx, cfg, x.Stderr)
		}}
}

func configCmd() *cli.Command {
	return &cli.Command{Name: "config", HostOnly: true, Summary: "Show the daemon configuration", Sub: []*cli.Command{
		{Name: "show", Summary: "Print the effective configuration (file, then flags)",
			Flags: func(fs *flag.FlagSet) { fs.String("config", config.DefaultFile, "config file") },
			Run: func(ctx context.Context, x *cli.Ctx) error {
				cfg, err := effectiveConfig(x)
				if err != nil {
					return err
				}
				masked := cfg
				masked.AdminTokens = nil
				return x.Print(masked, func(w io.Writer) { fmt.Fprint(w, cfg.TOML()) })
			}},
	}}
}

// effectiveConfig is the config file --config names overlaid with the
// flags given (config.Effective).
func effectiveConfig(x *cli.Ctx) (config.Config, error) {
	return config.Effective(x.FS, x.G.StateDir, x.G.RunDir)
}

// Serve runs the daemon until ctx ends or SIGINT/SIGTERM. Shutting down
// never stops VMs: they keep running and the next daemon re-adopts them.
func Serve(ctx context.Context, cfg config.Config, logOut io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	format, err := announce.Format(cfg.LogFormat, logOut)
	if err != nil {
		return err
	}
	log := announce.NewLogger(logOut, format)
	defer governCPUs(cpus.Default, log.With("component", "cpus"))()

	paths, err := local.ResolvePaths(cfg.StateDir, cfg.RunDir)
	if err != nil {
		return err
	}
	reg := metrics.New()
	o := local.OpenOptions(cfg, paths, log)
	o.OnOperation = reg.ObserveOp
	o.BackgroundWarm = true
	e, err := Open(ctx, o)
	if err != nil {
		return err
	}
	defer e.Close()
	log.Info("minions starting", "version", cli.Version, "state_dir", paths.State, "driver", e.Driver.Name(), "jail", cfg.Jail, "sandbox", cfg.Sandbox)
	for _, w := range startupWarnings(e.Driver.Name(), e.Driver.Caps().KVM, cfg) {
		log.Warn(w)
	}
	if err := e.Network.Setup(ctx); err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := e.Service.Reconcile(ctx); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	if err := e.Service.ReattachPorts(ctx); err != nil {
		log.Warn("reattach vm ports", "err", err)
	}
	if _, err := e.Service.EnsureUser(ctx, "root", true); err != nil {
		return err
	}
	if err := e.Service.EnsureAdminKeys(ctx, cfg.AdminKeys); err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	var servers []*http.Server
	shutdown := func(srv *http.Server) {
		servers = append(servers, srv)
	}

	// The HTTP API: root-only unix socket, and TCP.
	h := api.NewHandler(api.Config{Service: e.Service, Log: log.With("component", "api"), AdminTokens: cfg.AdminTokens})
	sock := filepath.Join(paths.Run, api.SocketName)
	uln, err := api.ListenUnix(sock)
	if err != nil {
		return err
	}
	usrv := api.NewServer(h)
	shutdown(usrv)
	g.Go(func() error { return ignoreClosed(usrv.Serve(uln)) })
	var tln net.Listener
	if cfg.Bind != "" {
		authed, err := e.Service.AuthConfigured(ctx)
		if err != nil {
			return err
		}
		if err := api.CheckBind(cfg.Bind, authed || len(cfg.AdminTokens) > 0); err != nil {
			return err
		}
		tln, err = api.ListenTCP(cfg.Bind, cfg.TLSCert, cfg.TLSKey, cfg.InsecureHTTP)
		if err != nil {
			return err
		}
		if cfg.TLSCert == "" && api.CheckTransport(cfg.Bind, false, false) != nil {
			log.Warn("INSECURE: the api is served in plain http beyond loopback (--insecure-http): tokens cross the network in clear", "tcp", tln.Addr().String())
		}
		tsrv := api.NewServer(h)
		shutdown(tsrv)
		g.Go(func() error { return ignoreClosed(tsrv.Serve(tln)) })
		log.Info("api listening", "unix", sock, "tcp", tln.Addr().String(), "tls", cfg.TLSCert != "")
	}

	// The fabric, this host in the registry, its node agent (cluster.go):
	// beside the other listeners' start, not before it; a failure stops
	// serve like a listener's.
	var apiAddr net.Addr
	if tln != nil {
		apiAddr = tln.Addr()
	}
	clDone := make(chan *cluster, 1)
	g.Go(func() error {
		cl, err := startCluster(gctx, g, cfg, e, log, paths, apiAddr)
		clDone <- cl
		return err
	})
	defer func() {
		if cl := <-clDone; cl != nil {
			cl.close()
		}
	}()

	// Metrics on the admin listener only.
	reg.SetSource(e.Service)
	metricsAddr := ""
	if cfg.AdminBind != "" {
		aln, err := net.Listen("tcp", cfg.AdminBind)
		if err != nil {
			return fmt.Errorf("admin: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", reg)
		asrv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		shutdown(asrv)
		g.Go(func() error { return ignoreClosed(asrv.Serve(aln)) })
		metricsAddr = aln.Addr().String()
		log.Info("metrics listening", "addr", metricsAddr)
	}

	// Profiles, for root only (debug.go).
	if err := startDebug(g, shutdown, paths, log); err != nil {
		return err
	}

	// The SSH front door and the HTTPS proxy.
	sshAddr, err := startGateway(gctx, g, cfg, e, log, paths)
	if err != nil {
		return err
	}
	if err := startProxy(gctx, g, cfg, e, log, logOut, format, paths, reg); err != nil {
		return err
	}
	in := announce.Input{Version: cli.Version, PublicIP: cfg.PublicIP, SSH: sshAddr, Socket: sock, Metrics: metricsAddr,
		StateDir: paths.State, RunDir: paths.Run, KVM: e.Driver.Caps().KVM, Systemd: os.Getenv("INVOCATION_ID") != ""}
	if tln != nil {
		in.API, in.APITLS = tln.Addr().String(), cfg.TLSCert != ""
	}
	ep, err := storedEndpoint(ctx, e.Service)
	if err != nil {
		return err
	}
	in.Proxy = announce.Proxy{Domain: ep.Domain, HTTPSPort: ep.HTTPSPort, HTTPPort: ep.HTTPPort}
	announce.NewBanner(in).Announce(log, logOut, format)

	// Reconcile: processes that died, operations that were interrupted.
	// Every second, so a crash shows in the status within 2 s; on the
	// instants the daemon's other loops share (internal/tick).
	g.Go(func() error {
		t := tick.New(time.Second)
		defer t.Stop()
		for {
			select {
			case <-gctx.Done():
				return nil
			case <-t.C:
				start := time.Now()
				if err := e.Service.Reconcile(gctx); err != nil && gctx.Err() == nil {
					log.Warn("reconcile", "err", err)
				}
				reg.Observe("reconcile", time.Since(start))
			}
		}
	})

	// Warm templates: drop those of removed or rebuilt images, build the
	// default image's in the background (after a build or a change of the
	// default).
	g.Go(func() error { return KeepWarm(gctx, e.Service.KeepWarm) })

	// Supervise: VMs whose restart policy asks for it start again after
	// a crash or a host reboot (see service.Supervise).
	g.Go(func() error { return supervise(gctx, e.Service, log) })

	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, s := range servers {
			s.Shutdown(sctx)
		}
		return nil
	})
	err = g.Wait()
	log.Info("minions stopped; vms keep running")
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func ignoreClosed(err error) error {
	if errors.Is(err, http.ErrServerClosed) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// startupWarnings are what serve says at start about isolation: TCG is no
// security boundary, and a jail or sandbox turned off.
func startupWarnings(driver string, kvm bool, cfg config.Config) []string {
	var out []string
	if driver == qemu.DriverName && !kvm {
		out = append(out, qemu.TCGWarning)
	}
	if cfg.Jail == "off" {
		out = append(out, "the vm jail is off: QEMU and the agent relay run as root, unconfined")
	}
	if cfg.Sandbox == "off" {
		out = append(out, "the qemu seccomp sandbox is off")
	}
	return out
}

// KeepWarmEvery is how often serve and a node keep their warm templates.
const KeepWarmEvery = 30 * time.Second

// KeepWarm runs keep (service.KeepWarm: drop the templates of removed or
// rebuilt images, build the default image's when missing) at once and
// every KeepWarmEvery until ctx ends; it returns nil then.
func KeepWarm(ctx context.Context, keep func(context.Context)) error {
	t := time.NewTicker(KeepWarmEvery)
	defer t.Stop()
	for {
		keep(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
