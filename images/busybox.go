package images

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// busyboxShims are shell scripts standing in for commands people expect
// that a busybox build may lack (Debian's busybox-static has no nohup),
// by path in the image. One is installed only if busybox has no applet of
// that name.
var busyboxShims = map[string]string{
	"usr/bin/nohup": `#!/bin/sh
# nohup: run a command immune to hangups (this busybox has no nohup applet).
if [ $# -eq 0 ]; then
	echo "usage: nohup COMMAND [ARG]..." >&2
	exit 125
fi
trap '' HUP
if [ -t 1 ]; then
	if ! exec >>nohup.out 2>/dev/null; then
		exec >>"${HOME:-/root}/nohup.out" || exit 125
	fi
	echo "nohup: ignoring input and appending output to 'nohup.out'" >&2
fi
if [ -t 2 ]; then
	exec 2>&1
fi
if [ -t 0 ]; then
	exec </dev/null
fi
exec "$@"
`,
}

// busyboxReal is where the busybox binary goes when /bin/busybox is
// busyboxWrapper.
const busyboxReal = "/bin/busybox.real"

// busyboxWrapper is /bin/busybox (and the wget command) when the busybox
// build's wget crashes on -T. Everything but wget goes straight to the
// binary.
const busyboxWrapper = `#!/bin/sh
# Minions: the static busybox is ` + busyboxReal + `; every applet links to it
# except wget, which comes through here. That build's wget dies of SIGSEGV on
# -T: built without FEATURE_WGET_TIMEOUT, it still parses -T SEC as a number
# and writes it through a NULL pointer (a busybox bug). -T SEC, -TSEC,
# --timeout SEC and --timeout=SEC are dropped here, which is what a build
# without timeout support should do: a stalled transfer waits on TCP's own
# timeouts. (-T inside a cluster of flags, like -qT 5, is not recognised.)
real=` + busyboxReal + `
case ${0##*/} in
wget) ;;
*)
	if [ "$1" != wget ]; then
		exec "$real" "$@"
	fi
	shift
	;;
esac
n=$#
end=
while [ "$n" -gt 0 ]; do
	a=$1
	shift
	n=$((n - 1))
	if [ -z "$end" ]; then
		case $a in
		--) end=1 ;;
		-T | --timeout)
			if [ "$n" -gt 0 ]; then
				shift
				n=$((n - 1))
			fi
			continue
			;;
		-T* | --timeout=*) continue ;;
		esac
	fi
	set -- "$@" "$a"
done
exec "$real" wget "$@"
`

// appletPlan turns busybox's --list-full output (one applet path a line,
// relative to /: bin/ls, usr/bin/wget) into the links to busybox the
// minimal image gets and the shims (keys of busyboxShims) it needs
// besides. Every applet is linked except what the image fills itself
// (sbin/init is the agent, bin/busybox the binary, linuxrc is not wanted)
// and paths that would leave the root. Both lists are sorted and free of
// duplicates.
func appletPlan(listFull string) (links, shims []string) {
	names := map[string]bool{}
	seen := map[string]bool{}
	for _, applet := range strings.Fields(listFull) {
		applet = strings.TrimLeft(applet, "/")
		if applet == "" || applet == "sbin/init" || applet == "linuxrc" || applet == "bin/busybox" ||
			applet != filepath.Clean(applet) || applet == ".." || strings.HasPrefix(applet, "../") || seen[applet] {
			continue
		}
		seen[applet] = true
		names[filepath.Base(applet)] = true
		links = append(links, applet)
	}
	for p := range busyboxShims {
		if !names[filepath.Base(p)] && !seen[p] {
			shims = append(shims, p)
		}
	}
	sort.Strings(links)
	sort.Strings(shims)
	return links, shims
}

// wgetTimeoutCrashes reports whether the wget of busybox bb dies of
// SIGSEGV when given -T (Debian 12's busybox builds do). The probe sends
// nothing beyond loopback and is bounded to ten seconds.
func wgetTimeoutCrashes(ctx context.Context, bb string) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := exec.CommandContext(ctx, bb, "wget", "-q", "-T", "1", "-O", "/dev/null", "http://127.0.0.1:1/").Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGSEGV
}

// installBusybox puts BusyboxPath into root as /bin/busybox, links every
// applet it has to it (see appletPlan) and adds busyboxShims for commands
// it lacks. If its wget crashes on -T, the binary goes to busyboxReal
// instead and /bin/busybox (and wget) is busyboxWrapper.
func installBusybox(ctx context.Context, root string) error {
	out, err := exec.CommandContext(ctx, BusyboxPath, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	links, shims := appletPlan(string(out))
	wrap := wgetTimeoutCrashes(ctx, BusyboxPath)
	target := "/bin/busybox"
	if wrap {
		target = busyboxReal
		if err := os.WriteFile(filepath.Join(root, "bin/busybox"), []byte(busyboxWrapper), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(BusyboxPath, filepath.Join(root, target), 0o755); err != nil {
		return err
	}
	for _, applet := range links {
		to := target
		if wrap && filepath.Base(applet) == "wget" {
			to = "/bin/busybox"
		}
		p := filepath.Join(root, applet)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink(to, p); err != nil {
			return fmt.Errorf("link busybox applet %s: %w", applet, err)
		}
	}
	for _, name := range shims {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(busyboxShims[name]), 0o755); err != nil {
			return err
		}
	}
	return nil
}
