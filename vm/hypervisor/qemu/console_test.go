package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/minionsdev/minions/vm/hypervisor"
)

// With a console logger configured, QEMU writes the console into the FIFO
// in the run dir (the logger caps the log); without one, into the log.
func TestConsoleGoesThroughTheLoggerFIFO(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinux")
	os.WriteFile(kernel, nil, 0o644)
	spec := hypervisor.Spec{ID: "a", CPUs: 1, MemoryMiB: 256, Kernel: kernel, RunDir: dir, ConsoleLog: filepath.Join(dir, "c.log")}
	d := fakeHost(AccelTCG, false)
	m, err := d.machineFor(spec)
	if err != nil {
		t.Fatal(err)
	}
	if args := strings.Join(m.args(), " "); !strings.Contains(args, "logfile="+spec.ConsoleLog+",") {
		t.Fatalf("without a logger: %s", args)
	}
	d.cfg.ConsoleCommand = []string{"/bin/minions", "console-log"}
	if m, err = d.machineFor(spec); err != nil {
		t.Fatal(err)
	}
	args := strings.Join(m.args(), " ")
	if !strings.Contains(args, "logfile="+filepath.Join(dir, consoleFIFO)+",") || strings.Contains(args, "c.log") {
		t.Fatalf("with a logger: %s", args)
	}
	if err := (Config{RelayCommand: []string{"r"}, ConsoleMaxBytes: 100}).Validate(); err == nil {
		t.Fatal("a 100-byte console cap was accepted")
	}
}
