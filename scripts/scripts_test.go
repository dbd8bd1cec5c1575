package scripts

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readmeSetup returns the commands in the fenced blocks of the README's
// set-up section, in order.
func readmeSetup(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	in, fence := false, false
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "## "):
			in = strings.HasPrefix(line, "## Set-up")
		case in && strings.HasPrefix(line, "```"):
			fence = !fence
		case in && fence && strings.TrimSpace(line) != "":
			cmds = append(cmds, strings.TrimSpace(line))
		}
	}
	return cmds
}

func TestREADMESetupCommands(t *testing.T) {
	cmds := readmeSetup(t)
	want := []string{"./scripts/setup.sh --http-bind 127.0.0.1:8080", "./scripts/test.sh"}
	if strings.Join(cmds, "\n") != strings.Join(want, "\n") {
		t.Fatalf("README set-up commands = %q, want exactly %q", cmds, want)
	}
	for _, c := range cmds {
		if strings.HasPrefix(c, "sudo") {
			t.Errorf("%q starts with sudo: a fresh Debian machine logged in as root has none", c)
		}
		script := strings.TrimPrefix(strings.Fields(c)[0], "./")
		st, err := os.Stat(filepath.Join("..", script))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&0o100 == 0 {
			t.Errorf("%s is not executable: %q fails as written", script, c)
		}
	}
	ci, err := os.ReadFile("../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ci), `exec bash "$(dirname "$0")/../scripts/test.sh"`) {
		t.Errorf(".ci/run does not run scripts/test.sh (the README's test command):\n%s", ci)
	}
}

// openDir is a temporary directory every user may enter (t.TempDir's
// parent is private to root).
func openDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "minions-scripts")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// copyScripts copies scripts/ into a directory every user may read, so
// the scripts can run as another user.
func copyScripts(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(openDir(t), "scripts")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"root.sh", "setup.sh", "test.sh"} {
		b, err := os.ReadFile(f)
		if os.IsNotExist(err) {
			continue // the scripts say what they need
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// pathWith returns a directory holding only the named commands (links to
// the real ones), for a PATH on which sudo does not exist.
func pathWith(t *testing.T, cmds ...string) string {
	t.Helper()
	dir := openDir(t)
	for _, c := range cmds {
		p, err := exec.LookPath(c)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(dir, c)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

var scriptTools = []string{"bash", "readlink", "dirname", "basename", "id", "cat"}

func TestScriptsWithoutSudo(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (runs the scripts as root and as nobody)")
	}
	dir := copyScripts(t)
	noSudo := pathWith(t, scriptTools...)
	run := func(t *testing.T, asNobody bool, path string, args ...string) (string, error) {
		t.Helper()
		argv := args
		if asNobody {
			setpriv, err := exec.LookPath("setpriv")
			if err != nil {
				t.Skip("setpriv is not installed")
			}
			argv = append([]string{setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"}, args...)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = []string{"PATH=" + path, "HOME=/"}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	bash, _ := exec.LookPath("bash")

	t.Run("root", func(t *testing.T) {
		out, err := run(t, false, noSudo, bash, filepath.Join(dir, "setup.sh"), "--dry-run", "--http-bind", "127.0.0.1:8080")
		if err != nil {
			t.Fatalf("setup.sh as root without sudo: %v\n%s", err, out)
		}
		if !strings.Contains(out, "+ minions serve --http-bind 127.0.0.1:8080\n") {
			t.Errorf("setup.sh --dry-run does not end in serve with the flags given:\n%s", out)
		}
		out, err = run(t, false, noSudo, bash, filepath.Join(dir, "test.sh"), "--dry-run")
		if err != nil || !strings.Contains(out, "go test") {
			t.Fatalf("test.sh as root without sudo: %v\n%s", err, out)
		}
	})
	t.Run("not root, no sudo", func(t *testing.T) {
		for _, s := range []string{"setup.sh", "test.sh"} {
			out, err := run(t, true, noSudo, bash, filepath.Join(dir, s), "--dry-run")
			if err == nil {
				t.Fatalf("%s as nobody without sudo succeeded:\n%s", s, out)
			}
			if !strings.Contains(out, "needs root, and sudo is not installed: run it as root") {
				t.Errorf("%s as nobody without sudo: no clear message:\n%s", s, out)
			}
		}
	})
	t.Run("not root, sudo", func(t *testing.T) {
		// A stand-in sudo records how the script asks to be re-run.
		withSudo := pathWith(t, scriptTools...)
		log := filepath.Join(openDir(t), "sudo.log")
		fake := "#!" + bash + "\necho \"$*\" > " + log + "\n"
		if err := os.WriteFile(filepath.Join(withSudo, "sudo"), []byte(fake), 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := run(t, true, withSudo, bash, filepath.Join(dir, "setup.sh"), "--dry-run", "--http-bind", "127.0.0.1:8080")
		if err != nil {
			t.Fatalf("setup.sh as nobody with sudo: %v\n%s", err, out)
		}
		b, err := os.ReadFile(log)
		if err != nil {
			t.Fatalf("sudo was not run: %v\n%s", err, out)
		}
		if want := "bash " + filepath.Join(dir, "setup.sh") + " --dry-run --http-bind 127.0.0.1:8080\n"; !strings.HasSuffix(string(b), want) {
			t.Errorf("sudo got %q, want it to end in %q", b, want)
		}
	})
}

// TestReleaseInstall builds the release tarball, installs it into a
// temporary prefix (with `minions init` inside a network namespace of its
// own and a temporary state directory) and runs `minions doctor` from there.
func TestReleaseInstall(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (install.sh runs minions init)")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("unshare is not installed")
	}
	tmp := t.TempDir()
	dist := filepath.Join(tmp, "dist")
	make := exec.Command("make", "release", "VERSION=0.0.0-test", "DIST="+dist)
	make.Dir = ".."
	if out, err := make.CombinedOutput(); err != nil {
		t.Fatalf("make release: %v\n%s", err, out)
	}
	tarball := filepath.Join(dist, "minions-0.0.0-test-linux-amd64.tar.gz")
	unpacked := filepath.Join(tmp, "unpacked")
	os.Mkdir(unpacked, 0o755)
	if out, err := exec.Command("tar", "-C", unpacked, "-xzf", tarball).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	rel := filepath.Join(unpacked, "minions-0.0.0-test-linux-amd64")
	for _, f := range []string{"minions", "minions-daemon", "minions-agent", "minions-relay", "install.sh", "systemd/minions.service", "systemd/minions-init.service"} {
		if _, err := os.Stat(filepath.Join(rel, f)); err != nil {
			t.Errorf("tarball lacks %s", f)
		}
	}
	for _, bin := range []string{"minions", "minions-daemon", "minions-agent", "minions-relay"} {
		f, err := elf.Open(filepath.Join(rel, bin))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked", bin)
			}
		}
		f.Close()
	}
	prefix := filepath.Join(tmp, "prefix")
	units := filepath.Join(tmp, "units")
	state := filepath.Join(tmp, "state")
	// A fresh network namespace: init's bridge and nftables table vanish
	// with it, and the host's are never touched.
	script := `set -e
"$1/install.sh" --prefix "$2" --systemd-dir "$3"
"$2/bin/minions" doctor --json > "$4/doctor.json"`
	cmd := exec.Command("unshare", "--net", "bash", "-c", script, "install", rel, prefix, units, tmp)
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+state, "MINIONS_RUN_DIR=", "MINIONS_AGENT_BIN=", "MINIONS_RELAY_BIN=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("install.sh and doctor: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "Next steps:") {
		t.Errorf("install.sh does not say what to do next:\n%s", out)
	}
	b, err := os.ReadFile(filepath.Join(tmp, "doctor.json"))
	if err != nil {
		t.Fatal(err)
	}
	var checks []struct {
		What   string `json:"what"`
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
	}
	if err := json.Unmarshal(b, &checks); err != nil {
		t.Fatalf("doctor --json: %v\n%s", err, b)
	}
	got := map[string]string{}
	for _, c := range checks {
		if c.OK {
			got[c.What] = c.Detail
		}
	}
	if d, ok := got["guest agent"]; !ok || d != filepath.Join(prefix, "lib", "minions", "minions-agent") {
		t.Errorf("doctor does not find the installed guest agent under the prefix: %q\n%s", d, b)
	}
	if d, ok := got["agent relay"]; !ok || d != filepath.Join(prefix, "lib", "minions", "minions-relay") {
		t.Errorf("doctor does not find the installed agent relay under the prefix: %q\n%s", d, b)
	}
	if _, ok := got["network"]; !ok {
		t.Errorf("the bridge and nftables of minions init are not in place:\n%s", b)
	}
	if _, err := os.Stat(filepath.Join(state, "minions.db")); err != nil {
		t.Errorf("minions init did not create the state directory: %v", err)
	}
	unit, err := os.ReadFile(filepath.Join(units, "minions.service"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "ExecStart=" + filepath.Join(prefix, "bin", "minions") + " serve\n"; !strings.Contains(string(unit), want) {
		t.Errorf("minions.service does not run the installed binary (%q):\n%s", want, unit)
	}
}
