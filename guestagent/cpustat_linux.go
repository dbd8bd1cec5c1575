package guestagent

import (
	"bytes"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/guestagent/proto"
)

// cpuSample is what the guest's CPUs had done at one moment: the agent's
// own CPU time, and the whole guest's busy (not idle, not iowait) and
// iowait time, from /proc/stat (USER_HZ ticks, 10 ms).
type cpuSample struct {
	at            time.Time
	agent         time.Duration
	busy, iowait  time.Duration
	statTicksRead bool
}

// userHZ is the unit of /proc/stat (USER_HZ is 100 on every Linux ABI).
const userHZ = 100

// sampleCPU reads the sample now; a field it cannot read stays zero
// (statTicksRead false: /proc/stat was not readable).
func sampleCPU(procStat string) cpuSample {
	s := cpuSample{at: time.Now()}
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
		s.agent = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b, err := os.ReadFile(procStat)
	if err != nil {
		return s
	}
	busy, _, iowait, ok := parseProcStat(b)
	if ok {
		s.busy = time.Duration(busy) * time.Second / userHZ
		s.iowait = time.Duration(iowait) * time.Second / userHZ
		s.statTicksRead = true
	}
	return s
}

// parseProcStat reads the first ("cpu", all CPUs) line of /proc/stat:
// user nice system idle iowait irq softirq steal guest guest_nice, in
// USER_HZ ticks. Busy is everything but idle and iowait (guest and
// guest_nice are already counted in user and nice).
func parseProcStat(b []byte) (busy, idle, iowait uint64, ok bool) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := bytes.Fields(line)
	if len(f) < 8 || string(f[0]) != "cpu" { // Linux has had 7 fields since 2.6
		return 0, 0, 0, false
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(string(v), 10, 64)
		if err != nil {
			return 0, 0, 0, false
		}
		switch {
		case i >= 8: // guest, guest_nice: in user, nice
		case i == 3:
			idle = n
		case i == 4:
			iowait = n
		default:
			busy += n
		}
	}
	return busy, idle, iowait, true
}

// cpuSince is what the guest's CPUs did between s and now, for the reply.
func (s cpuSample) cpuSince(procStat string) *proto.ReidentifyCPU {
	now := sampleCPU(procStat)
	c := &proto.ReidentifyCPU{WallMillis: now.at.Sub(s.at).Milliseconds(), AgentMillis: (now.agent - s.agent).Milliseconds()}
	if s.statTicksRead && now.statTicksRead {
		c.BusyMillis = (now.busy - s.busy).Milliseconds()
		c.IOWaitMillis = (now.iowait - s.iowait).Milliseconds()
	}
	return c
}
