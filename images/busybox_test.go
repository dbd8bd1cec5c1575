package images

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

func TestAppletPlan(t *testing.T) {
	// What Debian 12's busybox-static lists, abridged, plus what must
	// not become a link.
	list := "bin/sh\nbin/ls\nusr/bin/wget\nsbin/ip\nusr/sbin/httpd\nsbin/init\nlinuxrc\nbin/busybox\n" +
		"bin/ls\n../etc/passwd\nusr/../../x\n/usr/bin/tail\n\n"
	links, shims := appletPlan(list)
	wantLinks := []string{"bin/ls", "bin/sh", "sbin/ip", "usr/bin/tail", "usr/bin/wget", "usr/sbin/httpd"}
	if !reflect.DeepEqual(links, wantLinks) {
		t.Errorf("links\n got %q\nwant %q", links, wantLinks)
	}
	if !reflect.DeepEqual(shims, []string{"usr/bin/nohup"}) {
		t.Errorf("shims %q, want the nohup shim (busybox has no nohup)", shims)
	}
	// A build with nohup gets the applet, not the shim, wherever it is.
	links, shims = appletPlan("bin/sh\nbin/nohup\n")
	if !reflect.DeepEqual(links, []string{"bin/nohup", "bin/sh"}) || len(shims) != 0 {
		t.Errorf("with a nohup applet: links %q shims %q", links, shims)
	}
}

func TestPatchWgetTimeout(t *testing.T) {
	bin := append([]byte("\x7fELF...usage: %s\x00"), wgetOptsCrashing...)
	bin = append(bin, "-1:\xfe--\xfb\x00content-length\x00"...)
	got, err := patchWgetTimeout(bin)
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(string(bin), "U:T:+t:n::\x00", "U:T:t:n:::\x00", 1)
	if string(got) != want || len(got) != len(bin) {
		t.Errorf("patched\n got %q\nwant %q", got, want)
	}
	if !bytes.Contains(bin, wgetOptsCrashing) {
		t.Error("the input was modified")
	}
	for _, bad := range [][]byte{[]byte("no wget here"), append(append([]byte{}, wgetOptsCrashing...), wgetOptsCrashing...), got} {
		if _, err := patchWgetTimeout(bad); !errors.Is(err, errs.FailedPrecondition) {
			t.Errorf("patch %q: %v, want FailedPrecondition", bad, err)
		}
	}
}

// fakeBusybox writes a shell script standing in for busybox: it lists
// applets for --list-full and, while it holds wget's crashing option
// string, dies of SIGSEGV on wget -T.
func fakeBusybox(t *testing.T, dir, list string, crash bool) string {
	t.Helper()
	script := "#!/bin/sh\nif [ \"$1\" = --list-full ]; then printf '" + list + "'; exit 0; fi\n" +
		"if [ \"$1\" = wget ] && grep -qF 'U:T:''+t' \"$0\"; then for a in \"$@\"; do [ \"$a\" = -T ] && kill -SEGV $$; done; fi\nexit 1\n"
	if crash {
		script += "# " + string(wgetOptsCrashing) + "\n"
	}
	p := filepath.Join(dir, "busybox")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// tree describes root: each path with its link target, "file" or "dir".
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	got := map[string]string{}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			got[rel], _ = os.Readlink(p)
		case fi.IsDir():
			got[rel] = "dir"
		default:
			got[rel] = "file"
		}
		return nil
	})
	return got
}

func TestInstallBusybox(t *testing.T) {
	old := BusyboxPath
	defer func() { BusyboxPath = old }()
	list := `bin/sh\nusr/bin/wget\nsbin/init\nsbin/ip\nbin/ls\n`
	want := map[string]string{
		"bin": "dir", "bin/busybox": "file", "bin/sh": "/bin/busybox", "bin/ls": "/bin/busybox",
		"usr": "dir", "usr/bin": "dir", "usr/bin/wget": "/bin/busybox", "usr/bin/nohup": "file",
		"sbin": "dir", "sbin/ip": "/bin/busybox",
	}
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprint("crash=", crash), func(t *testing.T) {
			dir := t.TempDir()
			BusyboxPath = fakeBusybox(t, dir, list, crash)
			root := filepath.Join(dir, "root")
			os.MkdirAll(filepath.Join(root, "bin"), 0o755)
			var said []string
			if err := installBusybox(context.Background(), root, func(s string) { said = append(said, s) }); err != nil {
				t.Fatal(err)
			}
			if got := tree(t, root); !reflect.DeepEqual(got, want) {
				t.Errorf("tree\n got %v\nwant %v", got, want)
			}
			b, _ := os.ReadFile(filepath.Join(root, "bin/busybox"))
			if bytes.Contains(b, wgetOptsCrashing) {
				t.Error("the image's busybox still has the crashing option string")
			}
			if crash != bytes.Contains(b, wgetOptsFixed) || len(said) != map[bool]int{false: 0, true: 1}[crash] {
				t.Errorf("crash=%v: fixed string present %v, progress %q", crash, bytes.Contains(b, wgetOptsFixed), said)
			}
			nohup, _ := os.ReadFile(filepath.Join(root, "usr/bin/nohup"))
			if string(nohup) != busyboxShims["usr/bin/nohup"] {
				t.Errorf("nohup shim: %q", nohup)
			}
		})
	}
}

// TestHostBusyboxWgetFix patches the host's busybox (Debian 12's
// busybox-static crashes on wget -T) and runs it against a local server:
// -T no longer crashes and the options around it keep their meaning.
func TestHostBusyboxWgetFix(t *testing.T) {
	if err := checkStaticBusybox(BusyboxPath); err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	if !wgetTimeoutCrashes(ctx, BusyboxPath) {
		t.Skipf("%s: wget -T does not crash", BusyboxPath)
	}
	b, err := os.ReadFile(BusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	fixed, err := patchWgetTimeout(b)
	if err != nil {
		t.Fatal(err)
	}
	bb := filepath.Join(t.TempDir(), "busybox")
	if err := os.WriteFile(bb, fixed, 0o755); err != nil {
		t.Fatal(err)
	}
	if wgetTimeoutCrashes(ctx, bb) {
		t.Fatal("patched busybox still crashes on wget -T")
	}
	var seen http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		io.WriteString(w, "page "+r.URL.Path+"\n")
	}))
	defer srv.Close()
	out, err := exec.Command(bb, "wget", "-q", "-T", "5", "-t", "2", "-U", "minions-test", "--header", "X-Test: yes",
		"-O", "-", srv.URL+"/a").Output()
	if err != nil || string(out) != "page /a\n" {
		t.Fatalf("patched wget -T 5: %v %q", err, out)
	}
	if seen.Get("User-Agent") != "minions-test" || seen.Get("X-Test") != "yes" {
		t.Errorf("server saw %v", seen)
	}
	// Options after the URL, -T glued to its value, the ignored -n and -t.
	out, err = exec.Command(bb, "wget", srv.URL+"/b", "-T5", "-n", "-t", "3", "-q", "-O", "-").Output()
	if err != nil || string(out) != "page /b\n" {
		t.Fatalf("patched wget URL -T5: %v %q", err, out)
	}
}
