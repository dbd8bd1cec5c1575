package images

import (
	"bytes"
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

	"github.com/minionsdev/minions/internal/errs"
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

// Debian 12's busybox builds (1.35) have FEATURE_WGET_TIMEOUT off, yet
// wget's option string still declares -T as a number option; getopt32 then
// writes the number through the NULL destination wget passes for it, and
// "wget -T 5 URL" dies of SIGSEGV (busybox bug; the upstream fix parses -T
// as a string, which getopt32 drops when the destination is NULL). The
// image's busybox gets that fix as a same-length patch of the option
// string: -T takes a string, and n's optional argument gains a third
// colon, which getopt32 and getopt_long both read as "optional". Option
// letters, their order and the destinations are unchanged. The string holds
// a NUL (before its complementary part), so the compiler never shares its
// bytes with another string.
var (
	wgetOptsCrashing = []byte("^cqSO:o:P:Y:U:T:+t:n::\x00")
	wgetOptsFixed    = []byte("^cqSO:o:P:Y:U:T:t:n:::\x00")
)

// patchWgetTimeout returns a copy of the busybox binary b with wget's -T
// fixed (see wgetOptsCrashing). It fails with FailedPrecondition unless
// the crashing option string occurs exactly once.
func patchWgetTimeout(b []byte) ([]byte, error) {
	if n := bytes.Count(b, wgetOptsCrashing); n != 1 {
		return nil, errs.New(errs.FailedPrecondition, "busybox wget option string %q found %d times, want once", wgetOptsCrashing[:len(wgetOptsCrashing)-1], n)
	}
	out := bytes.Clone(b)
	i := bytes.Index(out, wgetOptsCrashing)
	copy(out[i:], wgetOptsFixed)
	return out, nil
}

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
// it lacks. If its wget crashes on -T, the copy gets patchWgetTimeout,
// checked by running it; a binary the patch does not fit is copied as is
// and said so through progress.
func installBusybox(ctx context.Context, root string, progress func(string)) error {
	out, err := exec.CommandContext(ctx, BusyboxPath, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	links, shims := appletPlan(string(out))
	dst := filepath.Join(root, "bin/busybox")
	if err := copyFile(BusyboxPath, dst, 0o755); err != nil {
		return err
	}
	if wgetTimeoutCrashes(ctx, dst) {
		b, err := os.ReadFile(dst)
		if err != nil {
			return err
		}
		fixed, err := patchWgetTimeout(b)
		if err != nil {
			progress(fmt.Sprintf("busybox wget -T crashes, left as is: %v", err))
		} else {
			if err := os.WriteFile(dst, fixed, 0o755); err != nil {
				return err
			}
			if wgetTimeoutCrashes(ctx, dst) {
				return fmt.Errorf("busybox: wget -T still crashes after the option string fix")
			}
			progress("busybox: fixed wget -T (busybox built without wget timeouts crashed on it)")
		}
	}
	for _, applet := range links {
		p := filepath.Join(root, applet)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", p); err != nil {
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
