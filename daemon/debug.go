package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/daemon/local"
	"golang.org/x/sync/errgroup"
)

// DebugSocketName is the profiling socket in the daemon's run directory.
const DebugSocketName = "debug.sock"

// debugHandler serves Go's profiles (/debug/pprof/...) to uid-0 peers
// only: profiles show memory contents, paths and timing, so they are not
// for every local user. Fetch one with
//
//	curl --unix-socket /run/minions/debug.sock -o cpu.pprof 'http://minions/debug/pprof/profile?seconds=10'
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p, ok := api.PeerFrom(r.Context()); !ok || p.UID != 0 {
			http.Error(w, "profiles are for root only", http.StatusForbidden)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// listenDebug listens on the profiling socket at path, mode 0600 (root
// only, and the handler checks the peer too), replacing a stale file.
func listenDebug(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("debug socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// startDebug serves the profiles on the run directory's debug socket.
func startDebug(g *errgroup.Group, shutdown func(*http.Server), paths local.Paths, log *slog.Logger) error {
	path := filepath.Join(paths.Run, DebugSocketName)
	l, err := listenDebug(path)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: debugHandler(), ConnContext: api.ConnContext, ReadHeaderTimeout: 10 * time.Second}
	shutdown(srv)
	g.Go(func() error { return ignoreClosed(srv.Serve(l)) })
	log.Info("profiles on the root-only socket", "unix", path)
	return nil
}
