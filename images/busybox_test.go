package images

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
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

// fakeBusybox writes a shell script standing in for busybox: it lists
// applets for --list-full and, if crash, dies of SIGSEGV on wget -T.
func fakeBusybox(t *testing.T, dir, list string, crash bool) string {
	t.Helper()
	script := "#!/bin/sh\nif [ \"$1\" = --list-full ]; then printf '" + list + "'; exit 0; fi\n"
	if crash {
		script += "if [ \"$1\" = wget ]; then for a in \"$@\"; do [ \"$a\" = -T ] && kill -SEGV $$; done; fi\n"
	}
	script += "exit 1\n"
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
	list := `bin/sh\nusr/bin/wget\nsbin/init\nsbin/ip\n`
	ctx := context.Background()

	t.Run("wget-works", func(t *testing.T) {
		dir := t.TempDir()
		BusyboxPath = fakeBusybox(t, dir, list, false)
		root := filepath.Join(dir, "root")
		os.MkdirAll(filepath.Join(root, "bin"), 0o755)
		if err := installBusybox(ctx, root); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"bin": "dir", "bin/busybox": "file", "bin/sh": "/bin/busybox",
			"usr": "dir", "usr/bin": "dir", "usr/bin/wget": "/bin/busybox", "usr/bin/nohup": "file",
			"sbin": "dir", "sbin/ip": "/bin/busybox",
		}
		if got := tree(t, root); !reflect.DeepEqual(got, want) {
			t.Errorf("tree\n got %v\nwant %v", got, want)
		}
	})

	t.Run("wget-crashes-on-T", func(t *testing.T) {
		dir := t.TempDir()
		BusyboxPath = fakeBusybox(t, dir, list, true)
		root := filepath.Join(dir, "root")
		os.MkdirAll(filepath.Join(root, "bin"), 0o755)
		if err := installBusybox(ctx, root); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			"bin": "dir", "bin/busybox": "file", "bin/busybox.real": "file", "bin/sh": "/bin/busybox.real",
			"usr": "dir", "usr/bin": "dir", "usr/bin/wget": "/bin/busybox", "usr/bin/nohup": "file",
			"sbin": "dir", "sbin/ip": "/bin/busybox.real",
		}
		if got := tree(t, root); !reflect.DeepEqual(got, want) {
			t.Errorf("tree\n got %v\nwant %v", got, want)
		}
		if b, _ := os.ReadFile(filepath.Join(root, "bin/busybox")); string(b) != busyboxWrapper {
			t.Error("/bin/busybox is not the wrapper")
		}
	})
}

// TestBusyboxWrapper runs the wrapper under busybox's own sh (the minimal
// image's shell) with a stand-in for the real binary that prints its
// arguments.
func TestBusyboxWrapper(t *testing.T) {
	if _, err := os.Stat(BusyboxPath); err != nil {
		t.Skip("no busybox: ", err)
	}
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	os.WriteFile(real, []byte("#!/bin/sh\nfor a in \"$@\"; do printf '[%s]' \"$a\"; done\n"), 0o755)
	script := strings.Replace(busyboxWrapper, "real="+busyboxReal+"\n", "real="+real+"\n", 1)
	if script == busyboxWrapper {
		t.Fatal("wrapper does not set real=" + busyboxReal)
	}
	bb := filepath.Join(dir, "busybox")
	os.WriteFile(bb, []byte(script), 0o755)
	wget := filepath.Join(dir, "wget")
	os.Symlink(bb, wget)
	for _, c := range []struct {
		as   string
		args []string
		want string
	}{
		{bb, []string{"wget", "-O", "-", "http://10.0.0.1/"}, "[wget][-O][-][http://10.0.0.1/]"},
		{bb, []string{"wget", "-q", "-T", "5", "-O", "-", "http://h/a b"}, "[wget][-q][-O][-][http://h/a b]"},
		{wget, []string{"-T5", "--timeout", "3", "--timeout=4", "-q", "u", "-T"}, "[wget][-q][u]"},
		{wget, []string{"-q", "--", "-T", "x"}, "[wget][-q][--][-T][x]"},
		{bb, []string{"ls", "-T", "4", "/"}, "[ls][-T][4][/]"},
		{bb, []string{"--list"}, "[--list]"},
		{bb, nil, ""},
	} {
		out, err := exec.Command(BusyboxPath, append([]string{"sh", c.as}, c.args...)...).CombinedOutput()
		if err != nil || string(out) != c.want {
			t.Errorf("%s %q: %v %q, want %q", filepath.Base(c.as), c.args, err, out, c.want)
		}
	}
}

// TestHostBusyboxWgetProbe checks the probe against the host's busybox:
// Debian 12's busybox-static crashes on wget -T, and the wrapper (with the
// real binary) then fetches nothing but also does not crash.
func TestHostBusyboxWgetProbe(t *testing.T) {
	if err := checkStaticBusybox(BusyboxPath); err != nil {
		t.Skip(err)
	}
	crash := wgetTimeoutCrashes(context.Background(), BusyboxPath)
	t.Logf("%s: wget -T crashes: %v", BusyboxPath, crash)
	if !crash {
		return
	}
	dir := t.TempDir()
	script := strings.Replace(busyboxWrapper, "real="+busyboxReal+"\n", "real="+BusyboxPath+"\n", 1)
	bb := filepath.Join(dir, "busybox")
	os.WriteFile(bb, []byte(script), 0o755)
	// Port 1 on loopback: refused at once.
	cmd := exec.Command(BusyboxPath, "sh", bb, "wget", "-q", "-T", "1", "-O", "/dev/null", "http://127.0.0.1:1/")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("wrapped wget -T to a closed port: %v %s, want exit 1", err, out)
	}
}
