package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
)

// TokenFile is where `minions` looks for an API token when neither
// --api-key nor MINIONS_API_KEY gives one, relative to $HOME.
const TokenFile = ".config/minions/token"

// probeTimeout bounds the check that a daemon answers on its socket.
const probeTimeout = 2 * time.Second

// RunDir is the runtime directory the CLI and daemon agree on: --run-dir
// (or $MINIONS_RUN_DIR), else <state-dir>/run for a custom state
// directory, else /run/minions.
func RunDir(g *Global) string {
	switch {
	case g.RunDir != "":
		return g.RunDir
	case g.StateDir != "":
		return filepath.Join(g.StateDir, "run")
	}
	return "/run/minions"
}

// APIToken is the token the CLI presents: --api-key / MINIONS_API_KEY
// (already in g.APIKey), else the first line of ~/.config/minions/token.
func APIToken(g *Global, getenv func(string) string) string {
	if g.APIKey != "" {
		return g.APIKey
	}
	home := getenv("HOME")
	if home == "" {
		return ""
	}
	b, err := os.ReadFile(filepath.Join(home, TokenFile))
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(line)
}

// OpenRemote returns a Backend that talks to a daemon's HTTP API, or nil
// (and no error) when there is none to talk to, so the caller falls back to
// running the service in-process:
//
//   - --host URL (or $MINIONS_HOST): that daemon, with the token from
//     --api-key, $MINIONS_API_KEY or ~/.config/minions/token;
//   - else the local daemon's socket <run dir>/api.sock, if a daemon
//     answers on it: as root without a token, or as the token's user.
//
// A socket that exists but does not answer (a stale file) is ignored. A
// non-root user without a token gets errs.Unauthenticated with a hint,
// instead of a fall-back that would need root.
func OpenRemote(ctx context.Context, g *Global, getenv func(string) string) (service.Backend, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	token := APIToken(g, getenv)
	if g.Host != "" {
		return api.NewClient(g.Host, token)
	}
	sock := filepath.Join(RunDir(g), api.SocketName)
	if _, err := os.Stat(sock); err != nil {
		return nil, nil
	}
	c, err := api.NewClient("unix://"+sock, token)
	if err != nil {
		return nil, err
	}
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err = c.Whoami(pctx)
	switch {
	case err == nil:
		return c, nil
	case errors.Is(err, errs.Unauthenticated):
		c.Close()
		if token == "" {
			return nil, errs.New(errs.Unauthenticated, "the minions daemon needs a token for non-root users: ask an admin for one (`minions token create --user NAME`) and put it in ~/%s or $MINIONS_API_KEY", TokenFile)
		}
		return nil, err
	case errors.Is(err, errs.Unavailable):
		// Nobody listens: a stale socket. Run in-process.
		c.Close()
		return nil, nil
	}
	c.Close()
	return nil, err
}
