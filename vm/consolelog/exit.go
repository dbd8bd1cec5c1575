package consolelog

import (
	"bytes"
	"strconv"
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

// kernelStamp parses a printk timestamp at the start of line ("[   12.345678]",
// as the regular expression `^\[ *(\d+\.\d+)\]`). It is hand-written: the
// per-VM agent relay links this package to write the log, and regexp would
// be paid for in each VM's host memory (BenchmarkMemoryPerVM).
func kernelStamp(line []byte) (float64, bool) {
	if len(line) == 0 || line[0] != '[' {
		return 0, false
	}
	i := 1
	for i < len(line) && line[i] == ' ' {
		i++
	}
	start := i
	digits := func() bool {
		j := i
		for i < len(line) && '0' <= line[i] && line[i] <= '9' {
			i++
		}
		return i > j
	}
	if !digits() || i == len(line) || line[i] != '.' {
		return 0, false
	}
	i++
	if !digits() || i == len(line) || line[i] != ']' {
		return 0, false
	}
	t, err := strconv.ParseFloat(string(line[start:i]), 64)
	return t, err == nil
}

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
	if exitAt, ok := kernelStamp(line); ok {
		for rest := after; len(rest) > 0; {
			if t, ok := kernelStamp(rest); ok && t < exitAt {
				return ExitUnknown, ""
			}
			i := bytes.IndexByte(rest, '\n')
			if i < 0 {
				break
			}
			rest = rest[i+1:]
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
