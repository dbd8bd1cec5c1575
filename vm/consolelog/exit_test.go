package consolelog

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// A sysrq crash as the Debian cloud kernel prints it with quiet.
const panicTail = "minions-agent: ready (agent 62 ms)\r\n" +
	"[   41.200311] sysrq: Trigger a crash\r\n" +
	"[   41.201002] Kernel panic - not syncing: sysrq triggered crash\r\n" +
	"[   41.201500] CPU: 0 PID: 212 Comm: sh Not tainted 6.1.0-56-cloud-amd64 #1\r\n" +
	"[   41.209999] Kernel Offset: disabled\r\n" +
	"[   41.210100] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\r\n"

func TestClassifyExit(t *testing.T) {
	for _, c := range []struct {
		name, tail string
		want       ExitReason
		line       string
	}{
		{"empty", "", ExitUnknown, ""},
		{"killed while running", "minions-agent: ready (agent 62 ms)\r\ntime=x level=INFO msg=\"agent ready\"\r\n", ExitUnknown, ""},
		{"panic", panicTail, ExitPanic, "Kernel panic - not syncing: sysrq triggered crash"},
		{"panic without the end line", "[    3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\n", ExitPanic, "Kernel panic - not syncing: VFS: Unable to mount root fs"},
		{"poweroff", "[   12.5] reboot: Power down\r\n", ExitPoweroff, "reboot: Power down"},
		{"halt", "[   12.5] reboot: System halted\n", ExitPoweroff, "reboot: System halted"},
		{"reboot", "minions-agent: shutdown\n[   20.000001] reboot: Restarting system\r\n", ExitReboot, "reboot: Restarting system"},
		{"last one wins", "[ 5.0] reboot: Restarting system\n" + panicTail, ExitPanic, "Kernel panic - not syncing: sysrq triggered crash"},
		{"panic, then a new boot, then a kill", panicTail + "[    0.264771] PCI: Fatal: No config space access function found\r\nminions-agent: ready (agent 410 ms)\r\n", ExitUnknown, ""},
		{"poweroff then a boot seen by its timestamps only", "[   12.5] reboot: Power down\n[    0.2] PCI: Fatal\n", ExitUnknown, ""},
		{"poweroff then Linux version", "[   12.5] reboot: Power down\nLinux version 6.1.0\n", ExitUnknown, ""},
		{"later lines of the same boot", "[   12.5] reboot: Power down\n[   12.6] ACPI: PM: Preparing to enter system sleep state S5\n", ExitPoweroff, "reboot: Power down"},
	} {
		got, line := ClassifyExit([]byte(c.tail))
		if got != c.want || line != c.line {
			t.Errorf("%s: ClassifyExit = %q, %q; want %q, %q", c.name, got, line, c.want, c.line)
		}
	}
}

func TestLastExitReadsTheRotatedLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if r, _ := LastExit(path); r != ExitUnknown {
		t.Fatalf("missing log: %q", r)
	}
	// The panic is split across the two files of a rotated log.
	cut := strings.Index(panicTail, "CPU:")
	if err := os.WriteFile(Rotated(path), []byte(strings.Repeat("x\n", 100000)+panicTail[:cut]), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(panicTail[cut:]), 0o600); err != nil {
		t.Fatal(err)
	}
	if r, line := LastExit(path); r != ExitPanic || !strings.HasPrefix(line, "Kernel panic") {
		t.Fatalf("LastExit = %q, %q", r, line)
	}
}

// A follower from the end sees only what is written after it was made:
// an earlier boot's output (its panic) is not read again.
func TestFollowerFromEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	fresh := NewFollowerFromEnd(path) // no log yet: from its start
	defer fresh.Close()
	if err := os.WriteFile(path, []byte(panicTail), 0o600); err != nil {
		t.Fatal(err)
	}
	r := NewFollowerFromEnd(path)
	defer r.Close()
	buf := make([]byte, 4096)
	if n, err := r.Read(buf); n != 0 || err != nil {
		t.Fatalf("read %q, %v before anything new", buf[:n], err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("[    0.2] booting again\n")
	f.Close()
	if n, _ := r.Read(buf); string(buf[:n]) != "[    0.2] booting again\n" {
		t.Fatalf("read %q", buf[:n])
	}
	if n, _ := fresh.Read(buf); !strings.HasPrefix(string(buf[:n]), "minions-agent: ready") {
		t.Fatalf("a follower made before the log existed read %q", buf[:n])
	}
}

// TestKernelStampAsRegexp: the hand-written timestamp parser finds what
// the regular expression it replaces finds, at the start of each line.
func TestKernelStampAsRegexp(t *testing.T) {
	re := regexp.MustCompile(`^\[ *(\d+\.\d+)\]`)
	for _, line := range []string{"[   12.345678] x", "[0.1]", "[12.]", "[.5]", "[ 1.2", "[1.2.3]", " [1.2]", "[  ]", "", "[", "[007.50] y", "[1x.2]", "[1.2x]"} {
		m := re.FindStringSubmatch(line)
		got, ok := kernelStamp([]byte(line))
		if (m != nil) != ok {
			t.Errorf("%q: parsed %v, regexp matched %v", line, ok, m != nil)
			continue
		}
		if ok {
			if want, _ := strconv.ParseFloat(m[1], 64); got != want {
				t.Errorf("%q: %v, want %v", line, got, want)
			}
		}
	}
}
