package kvm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestGuestProgramsMatchSources reassembles guest/*.S and compares with the
// embedded binaries, so a source edit without a rebuild fails here.
func TestGuestProgramsMatchSources(t *testing.T) {
	for _, tool := range []string{"as", "objcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (binutils): %v", tool, err)
		}
	}
	dir := t.TempDir()
	for _, name := range []string{"real16", "long64", "kernel64"} {
		obj := filepath.Join(dir, name+".o")
		bin := filepath.Join(dir, name+".bin")
		for _, args := range [][]string{
			{"as", "--64", "-o", obj, filepath.Join("guest", name+".S")},
			{"objcopy", "-O", "binary", "-j", ".text", obj, bin},
		} {
			if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", args, err, out)
			}
		}
		want, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join("guest", name+".bin"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("guest/%s.bin is stale: run guest/build.sh", name)
		}
	}
}
