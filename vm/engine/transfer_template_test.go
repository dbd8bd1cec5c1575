package engine

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// TestTemplateLayer: a disk that is an overlay of a warm template's disk
// (an instance created from a template before its disk was a copy) is
// refused for a live move, before anything moves; detached before any
// other move, it reads the same, is an overlay of the image, and may then
// move live too. An overlay of the image, as a cold instance's and now a
// warm one's, is left alone.
func TestTemplateLayer(t *testing.T) {
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skip("no " + tool)
		}
	}
	ctx := context.Background()
	dir := t.TempDir()
	l := &Local{cfg: Config{StateDir: filepath.Join(dir, "state")}, log: slog.New(slog.DiscardHandler)}
	img := filepath.Join(dir, "image.raw")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	qemuIO := func(path, cmd string) {
		t.Helper()
		out, err := exec.Command("qemu-io", "-f", "qcow2", "-c", cmd, path).CombinedOutput()
		if err != nil || strings.Contains(string(out), "verification failed") {
			t.Fatalf("qemu-io %q %s: %v\n%s", cmd, path, err, out)
		}
	}
	tdisk := filepath.Join(l.templatesDir(), ".disks", "0123456789abcdef-1.qcow2")
	for _, p := range []string{filepath.Dir(tdisk), l.vmDir("aaaaaaaaaaaa"), l.vmDir("bbbbbbbbbbbb")} {
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := disk.CreateOverlay(ctx, img, "raw", tdisk, 64<<20); err != nil {
		t.Fatal(err)
	}
	qemuIO(tdisk, "write -P 0x5a 0 2M") // what the template's boot wrote
	legacy := l.diskPath("aaaaaaaaaaaa")
	if err := disk.CreateOverlay(ctx, tdisk, "qcow2", legacy, 64<<20); err != nil {
		t.Fatal(err)
	}
	qemuIO(legacy, "write -P 0x77 1M 64k") // and the instance over it
	plain := l.diskPath("bbbbbbbbbbbb")
	if err := disk.CreateOverlay(ctx, img, "raw", plain, 64<<20); err != nil {
		t.Fatal(err)
	}
	err := l.notTemplateBacked(store.VM{ID: "aaaaaaaaaaaa", Name: "legacy"})
	if !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "warm template disk") || !strings.Contains(err.Error(), "without --live") {
		t.Errorf("live move of an overlay of a template's disk: %v, want FailedPrecondition naming the template disk", err)
	}
	if err := l.notTemplateBacked(store.VM{ID: "bbbbbbbbbbbb", Name: "plain"}); err != nil {
		t.Errorf("live move of an overlay of the image: %v", err)
	}
	plainBefore, _ := os.ReadFile(plain)
	if err := l.detachTemplateLayer(ctx, "legacy", legacy, plain); err != nil {
		t.Fatal(err)
	}
	if info, err := disk.Info(ctx, legacy); err != nil || info.Backing != img {
		t.Fatalf("the detached disk: %+v, %v; want an overlay of %s", info, err, img)
	}
	if b, _ := os.ReadFile(plain); !bytes.Equal(b, plainBefore) {
		t.Errorf("an overlay of the image was changed")
	}
	// The guest reads what it read, the template's disk no longer needed.
	if err := os.Rename(tdisk, tdisk+".gone"); err != nil {
		t.Fatal(err)
	}
	qemuIO(legacy, "read -P 0x5a 0 1M")
	qemuIO(legacy, "read -P 0x77 1M 64k")
	qemuIO(legacy, "read -P 0x5a 1088k 960k")
	qemuIO(legacy, "read -P 0 2M 1M")
	if err := l.notTemplateBacked(store.VM{ID: "aaaaaaaaaaaa", Name: "legacy"}); err != nil {
		t.Errorf("live move once detached: %v", err)
	}
}

// ramDrv is a driver stand-in for openRAM: a RAM file of its own (file),
// else a reader of the RAM (opener, when set).
type ramDrv struct {
	hypervisor.Driver
	file   string
	opener *bytesRAM
}

func (d ramDrv) RAMFile(*hypervisor.Handle) (string, int64, error) {
	if d.file == "" {
		return "", 0, errs.New(errs.FailedPrecondition, "no ram file of its own")
	}
	st, err := os.Stat(d.file)
	if err != nil {
		return "", 0, err
	}
	return d.file, st.Size(), nil
}
func (ramDrv) SaveStateKeepRAM(context.Context, *hypervisor.Handle, string) error { return nil }
func (ramDrv) StateRAM(string) string                                             { return "" }
func (ramDrv) NewRAMFile(int64) (string, error)                                   { return "", nil }
func (ramDrv) AdoptRAM(string, string) error                                      { return nil }

type ramOpenerDrv struct{ ramDrv }

func (d ramOpenerDrv) OpenRAM(*hypervisor.Handle) (hypervisor.RAMReader, int64, error) {
	return d.opener, int64(len(d.opener.b)), nil
}

type bytesRAM struct{ b []byte }

func (r *bytesRAM) ReadAt(p []byte, off int64) (int, error) { return copy(p, r.b[off:]), nil }
func (r *bytesRAM) Hole(off, n int64) bool                  { return false }
func (r *bytesRAM) Close() error                            { return nil }

// TestOpenRAMForClones: a pre-copy reads a VM's own RAM file when it has
// one, and otherwise the driver's reader (a warm clone's RAM,
// hypervisor.RAMOpener); a driver without either refuses.
func TestOpenRAMForClones(t *testing.T) {
	h := &hypervisor.Handle{}
	file := filepath.Join(t.TempDir(), "vm.ram")
	if err := os.WriteFile(file, []byte("own ram"), 0o600); err != nil {
		t.Fatal(err)
	}
	read := func(d interface {
		hypervisor.Driver
		hypervisor.RAMKeeper
	}) (string, error) {
		r, size, err := openRAM(d, d, h)
		if err != nil {
			return "", err
		}
		defer r.Close()
		b := make([]byte, size)
		_, err = r.ReadAt(b, 0)
		return string(b), err
	}
	if got, err := read(ramDrv{file: file}); err != nil || got != "own ram" {
		t.Errorf("own ram file: %q, %v", got, err)
	}
	if got, err := read(ramOpenerDrv{ramDrv{opener: &bytesRAM{[]byte("clone ram")}}}); err != nil || got != "clone ram" {
		t.Errorf("a clone's ram through the driver's reader: %q, %v", got, err)
	}
	if _, err := read(ramDrv{}); !errors.Is(err, errs.FailedPrecondition) {
		t.Errorf("no ram file and no reader: %v, want FailedPrecondition", err)
	}
}
