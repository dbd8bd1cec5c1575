package images

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
)

// Ubuntu defaults.
const (
	DefaultUbuntuMirror = "http://archive.ubuntu.com/ubuntu"
	DefaultUbuntuSuite  = "noble" // 24.04 LTS
)

// Host paths the Ubuntu build reads; variables so tests can point them
// elsewhere.
var (
	// UbuntuKeyring verifies the Ubuntu archive's Release files. Ubuntu
	// ships it in the ubuntu-keyring package; Debian 12 does not package
	// it.
	UbuntuKeyring = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
	// DebootstrapScripts is debootstrap's directory of suite scripts.
	DebootstrapScripts = "/usr/share/debootstrap/scripts"
)

// MirrorProbeTimeout bounds the request that checks a mirror is reachable
// before a build starts.
var MirrorProbeTimeout = 10 * time.Second

// UbuntuPackages are installed on top of debootstrap's minbase variant
// (Ubuntu's names for the same set as DebianPackages).
var UbuntuPackages = append([]string{
	"systemd", "systemd-sysv", "dbus", "udev", "kmod",
	"openssh-server", "iproute2", "iputils-ping", "netbase", "curl", "ca-certificates",
	"sudo", "git", "vim", "htop", "less", "procps", "build-essential",
}, debianDevTools...)

// debootstrapDistro describes a distribution debootstrap installs.
type debootstrapDistro struct {
	OS            string   // image OS name
	Suite         string   // release codename
	DefaultMirror string   // used when BuildOptions.Mirror is ""
	Components    []string // archive components
	Packages      []string // --include
	// Keyring, if set, is passed as --keyring and must exist.
	Keyring string
	// ScriptCandidates, if set, are debootstrap script names tried in
	// order under DebootstrapScripts; the first present one is passed as
	// debootstrap's 4th argument. resolve fills Script.
	ScriptCandidates []string
	Script           string
	// ProbeMirror checks <mirror>/dists/<suite>/Release before
	// debootstrap runs.
	ProbeMirror bool
	Files       map[string]string // written into the tree (path -> content)
	Links       map[string]string // symlinks made in the tree (path -> target)
}

// ubuntuDistro is Ubuntu 24.04 (noble) as debootstrap builds it.
func ubuntuDistro() debootstrapDistro {
	files := make(map[string]string, len(debianFiles))
	for k, v := range debianFiles {
		files[k] = v
	}
	// Ubuntu starts sshd from ssh.socket (socket activation).
	files["etc/systemd/system/minions-agent.service"] = strings.Replace(agentUnit, "ssh.service", "ssh.socket ssh.service", 1)
	return debootstrapDistro{
		OS: OSUbuntu, Suite: DefaultUbuntuSuite, DefaultMirror: DefaultUbuntuMirror,
		Components: []string{"main", "universe"}, Packages: UbuntuPackages,
		Keyring:          UbuntuKeyring,
		ScriptCandidates: []string{DefaultUbuntuSuite, "gutsy"}, // Ubuntu's scripts are all links to gutsy
		ProbeMirror:      true,
		Files:            files, Links: debianLinks,
	}
}

// resolve checks the host has d's keyring and picks its debootstrap
// script. FailedPrecondition names what is missing.
func (d *debootstrapDistro) resolve() error {
	if d.Keyring != "" {
		if _, err := os.Stat(d.Keyring); err != nil {
			return errs.New(errs.FailedPrecondition, "%s archive keyring %s is missing (%v): install the ubuntu-keyring package (Ubuntu hosts; Debian 12 does not package it) or copy that file from an Ubuntu system; "+
				"the build does not skip signature checks", d.OS, d.Keyring, errors.Unwrap(err))
		}
	}
	if len(d.ScriptCandidates) > 0 {
		d.Script = ""
		for _, name := range d.ScriptCandidates {
			p := filepath.Join(DebootstrapScripts, name)
			if _, err := os.Stat(p); err == nil {
				d.Script = p
				break
			}
		}
		if d.Script == "" {
			return errs.New(errs.FailedPrecondition, "debootstrap has no script for %s in %s (tried %s): install or upgrade debootstrap",
				d.Suite, DebootstrapScripts, strings.Join(d.ScriptCandidates, ", "))
		}
	}
	return nil
}

// debootstrapArgs is debootstrap's argument list installing d from mirror
// into root. For Debian it is exactly the historical list.
func (d debootstrapDistro) debootstrapArgs(root, mirror string) []string {
	args := []string{"--variant=minbase", "--components=" + strings.Join(d.Components, ",")}
	if d.Keyring != "" {
		args = append(args, "--keyring="+d.Keyring)
	}
	args = append(args, "--include="+strings.Join(d.Packages, ","), d.Suite, root, mirror)
	if d.Script != "" {
		args = append(args, d.Script)
	}
	return args
}

// cacheKey names d's cached debootstrap tree from mirror. Debian's key is
// the one it always had.
func (d debootstrapDistro) cacheKey(mirror string) string {
	var extra []string
	if c := strings.Join(d.Components, ","); c != "main" {
		extra = append(extra, "components="+c)
	}
	if d.Keyring != "" {
		extra = append(extra, "keyring="+d.Keyring)
	}
	if d.Script != "" {
		extra = append(extra, "script="+filepath.Base(d.Script))
	}
	return debootstrapKey(mirror, d.Suite, d.Packages, extra...)
}

// probeMirror checks that mirror serves rel (a path below it) within
// MirrorProbeTimeout, so a build fails in seconds with a clear message
// instead of deep inside debootstrap or dnf. An unreachable mirror or a
// server error is Unavailable; a missing file (HTTP 404, or absent under a
// file: URL) is FailedPrecondition: the mirror is not one of osName.
//
// An answer without marker in its first 64 KiB (a proxy's or captive
// portal's page instead of the file) counts as unreachable.
func probeMirror(ctx context.Context, mirror, rel, marker, osName string) error {
	target := strings.TrimRight(mirror, "/") + "/" + rel
	u, err := url.Parse(target)
	if err != nil {
		return errs.New(errs.InvalidArgument, "mirror %q: %v", mirror, err)
	}
	switch u.Scheme {
	case "file":
		f, err := os.Open(u.Path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return errs.New(errs.FailedPrecondition, "mirror %s has no %s: not a %s mirror", mirror, rel, osName)
			}
			return errs.New(errs.Unavailable, "mirror %s unreachable: %v", mirror, err)
		}
		defer f.Close()
		head, err := io.ReadAll(io.LimitReader(f, 64<<10))
		if err != nil || !strings.Contains(string(head), marker) {
			return errs.New(errs.FailedPrecondition, "mirror %s: %s is not a %s file (no %q in it)", mirror, rel, filepath.Base(rel), marker)
		}
		return nil
	case "http", "https":
	default:
		return errs.New(errs.InvalidArgument, "mirror %q is not an http(s) or file URL", mirror)
	}
	ctx, cancel := context.WithTimeout(ctx, MirrorProbeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return errs.New(errs.InvalidArgument, "mirror %q: %v", mirror, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			err = fmt.Errorf("no answer within %v", MirrorProbeTimeout)
		}
		return errs.New(errs.Unavailable, "mirror %s unreachable: %v", mirror, err)
	}
	head, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		if rerr != nil {
			return errs.New(errs.Unavailable, "mirror %s unreachable: GET %s: %v", mirror, rel, rerr)
		}
		if !strings.Contains(string(head), marker) {
			return errs.New(errs.Unavailable, "mirror %s unreachable: GET %s answered %s without %q in it: not the file (a proxy or captive portal in the way?)",
				mirror, rel, resp.Status, marker)
		}
		return nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return errs.New(errs.FailedPrecondition, "mirror %s has no %s (HTTP %d): not a %s mirror, or the release is missing", mirror, rel, resp.StatusCode, osName)
	default:
		return errs.New(errs.Unavailable, "mirror %s unreachable: GET %s: HTTP %s", mirror, rel, resp.Status)
	}
}

func (c *Catalog) buildUbuntu(ctx context.Context, o BuildOptions, progress func(string)) (Image, error) {
	return c.buildDebootstrap(ctx, ubuntuDistro(), o, progress)
}
