package consolelog

import (
	"bytes"
	"regexp"
	"strconv"
	"sync"
)

// ExitReason is why a guest's hypervisor exited, as the end of its serial
// console tells it. The guest kernel runs with panic=-1 (reboot at once on
// a panic) and the hypervisor with -no-reboot (a guest reboot ends the
// process), so every way a guest can end itself leaves the process and a
// last kernel line behind.
type ExitReason string

const (
	// ExitUnknown: the log ends without a line of the guest's own: the
	// hypervisor was killed, crashed, or the guest's last words were lost.
	ExitUnknown ExitReason = ""
	// ExitPanic: the guest kernel panicked ("Kernel panic - not syncing").
	ExitPanic ExitReason = "panic"
	// ExitPoweroff: the guest powered itself off or halted cleanly
	// ("reboot: Power down", "reboot: System halted").
	ExitPoweroff ExitReason = "poweroff"
	// ExitReboot: the guest asked for a reboot ("reboot: Restarting system").
	ExitReboot ExitReason = "reboot"
)

// exitMarkers are the kernel lines that end a guest, by reason. All are
// printed at KERN_EMERG, so "quiet" and a low loglevel keep them.
var exitMarkers = []struct {
	text   string
	reason ExitReason
}{
	{"Kernel panic - not syncing", ExitPanic},
	{"reboot: Power down", ExitPoweroff},
	{"reboot: System halted", ExitPoweroff},
	{"reboot: Restarting system", ExitReboot},
}

// bootMarkers are lines only a booting guest prints: after one of them an
// earlier exit line belongs to an earlier boot.
var bootMarkers = [][]byte{[]byte("Linux version "), []byte("minions-agent: ready")}

// kernelStamp is a printk timestamp at the start of a line ("[   12.345678]").
// Compiled on first use: the per-VM agent relay links this package to
// write the log and should not pay for it at start (BenchmarkMemoryPerVM).
var kernelStamp = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`(?m)^\[ *(\d+\.\d+)\]`) })

// ClassifyExit tells why the guest whose console log ends with tail
// stopped, and returns the line that says so (without its timestamp; ""
// for ExitUnknown). Only the last exit line counts, and only when no later
// boot follows it: a boot marker or a kernel timestamp earlier than the
// exit line's (printk time restarts at each boot). It is pure.
func ClassifyExit(tail []byte) (ExitReason, string) {
	at, reason := -1, ExitUnknown
	for _, m := range exitMarkers {
		if i := bytes.LastIndex(tail, []byte(m.text)); i > at {
			at, reason = i, m.reason
		}
	}
	if at < 0 {
		return ExitUnknown, ""
	}
	start := bytes.LastIndexByte(tail[:at], '\n') + 1
	end := bytes.IndexByte(tail[at:], '\n')
	if end < 0 {
		end = len(tail)
	} else {
		end += at
	}
	line, after := tail[start:end], tail[end:]
	for _, b := range bootMarkers {
		if bytes.Contains(after, b) {
			return ExitUnknown, ""
		}
	}
	if m := kernelStamp().FindSubmatch(line); m != nil {
		exitAt, _ := strconv.ParseFloat(string(m[1]), 64)
		for _, s := range kernelStamp().FindAllSubmatch(after, -1) {
			if t, _ := strconv.ParseFloat(string(s[1]), 64); t < exitAt {
				return ExitUnknown, ""
			}
		}
	}
	// The panic's closing line repeats it: "---[ end Kernel panic ... ]---".
	return reason, string(bytes.TrimSuffix(bytes.TrimSpace(tail[at:end]), []byte(" ]---")))
}

// LastExit is ClassifyExit on the last 16 KiB of the console log at path
// (both files of a rotated log). An unreadable or missing log is
// ExitUnknown.
func LastExit(path string) (ExitReason, string) {
	b, err := Tail(path, 16<<10)
	if err != nil {
		return ExitUnknown, ""
	}
	return ClassifyExit(b)
}
