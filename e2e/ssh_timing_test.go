package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// sshMilestones are the points of an OpenSSH client's `-v` log that split
// `ssh vm@host cmd` into what a user waits for, in order: each step of the
// timeline ends at its milestone (the first log line containing it) and
// starts at the one before (the first at the client's exec); the last
// ends when the client exits.
var sshMilestones = []struct{ label, line string }{
	{"exec -> TCP connected", "Connection established"},
	{"-> key exchange done", "SSH2_MSG_NEWKEYS received"},
	{"-> authenticated", "Authenticated to"},
	{"-> command sent (session channel open)", "Sending command"},
	{"-> exit status", "rtype exit-status"},
	{"-> client exited", ""},
}

// sshTimeline is when an OpenSSH client reached each of sshMilestones.
type sshTimeline struct {
	at [6]time.Duration // since exec, one per sshMilestones; 0: not seen
}

// steps returns the duration of each step of sshMilestones (0 where a
// milestone was not seen).
func (t sshTimeline) steps() []time.Duration {
	out := make([]time.Duration, len(t.at))
	var prev time.Duration
	for i, at := range t.at {
		if at == 0 {
			continue
		}
		out[i] = at - prev
		prev = at
	}
	return out
}

// stampedLines records the time each line written to it completed.
type stampedLines struct {
	start time.Time
	mu    sync.Mutex
	buf   bytes.Buffer
	part  []byte
	lines []stampedLine
}

type stampedLine struct {
	at   time.Duration
	text string
}

func (w *stampedLines) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Since(w.start)
	w.buf.Write(p)
	w.part = append(w.part, p...)
	for {
		i := bytes.IndexByte(w.part, '\n')
		if i < 0 {
			break
		}
		w.lines = append(w.lines, stampedLine{now, strings.TrimRight(string(w.part[:i]), "\r")})
		w.part = w.part[i+1:]
	}
	return len(p), nil
}

// runTimedSSH runs an OpenSSH client started with -v and returns its
// outcome (its stderr without the debug lines) and its timeline.
func runTimedSSH(cmd *exec.Cmd) (sshRun, sshTimeline, error) {
	var out bytes.Buffer
	errw := &stampedLines{start: time.Now()}
	cmd.Stdout, cmd.Stderr = &out, errw
	err := cmd.Run()
	took := time.Since(errw.start)
	r := sshRun{stdout: out.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
		err = nil
	}
	var tl sshTimeline
	var rest []string
	errw.mu.Lock()
	for _, l := range errw.lines {
		if !strings.HasPrefix(l.text, "debug") && !strings.HasPrefix(l.text, "Authenticated to") && !strings.HasPrefix(l.text, "Transferred:") {
			rest = append(rest, l.text)
		}
		for i, m := range sshMilestones {
			if m.line != "" && tl.at[i] == 0 && strings.Contains(l.text, m.line) {
				tl.at[i] = l.at
			}
		}
	}
	errw.mu.Unlock()
	tl.at[len(sshMilestones)-1] = took
	r.stderr = strings.Join(rest, "\n")
	return r, tl, err
}

type gatewayStep struct {
	name string
	s    samples
}

// gatewaySteps returns, from a daemon's JSON log, the step durations of
// the gateway's "vm session ended" lines (gateway.sessionTimes): of the
// nth (from 0) session that exited 0 of each VM whose name has prefix and
// suffix.
func gatewaySteps(log, prefix, suffix string, nth int) []gatewayStep {
	names := []string{"login", "channel", "agent", "open", "start", "run", "close"}
	steps := make([]gatewayStep, len(names))
	for i, n := range names {
		steps[i].name = n
	}
	seen := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l struct {
			Msg  string             `json:"msg"`
			VM   string             `json:"vm"`
			Exit string             `json:"exit"`
			MS   map[string]float64 `json:"ms"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Msg != "vm session ended" || l.Exit != "0" ||
			!strings.HasPrefix(l.VM, prefix) || !strings.HasSuffix(l.VM, suffix) {
			continue
		}
		seen[l.VM]++
		if seen[l.VM] != nth+1 {
			continue
		}
		for i, n := range names {
			if v, ok := l.MS[n]; ok {
				steps[i].s = append(steps[i].s, time.Duration(v*float64(time.Millisecond)))
			}
		}
	}
	return steps
}

// warmCreateSteps returns, from a daemon's JSON log, the step durations
// of the warm creates of each VM whose name has prefix and suffix: the
// engine's ("vm ready (warm)": disk, network, restore, agent,
// reidentify, record) and then the guest agent's re-identification steps
// ("guest re-identified", by vm_id), in the order first seen.
func warmCreateSteps(log, prefix, suffix string) []gatewayStep {
	var steps []gatewayStep
	index := map[string]int{}
	add := func(name string, d time.Duration) {
		i, ok := index[name]
		if !ok {
			i = len(steps)
			index[name] = i
			steps = append(steps, gatewayStep{name: name})
		}
		steps[i].s = append(steps[i].s, d)
	}
	type line struct {
		Msg   string `json:"msg"`
		VM    string `json:"vm"`
		VMID  string `json:"vm_id"`
		Steps string `json:"steps"`
		Took  int64  `json:"duration_ms"`
		Net   int64  `json:"network_ms"` // eth0's move, beside the steps
		// The guest's time during the call: its wall, the agent's CPU,
		// every process's CPU (the agent's included), iowait.
		Wall   *int64 `json:"guest_wall_ms"`
		Agent  int64  `json:"guest_agent_cpu_ms"`
		Busy   int64  `json:"guest_busy_ms"`
		IOWait int64  `json:"guest_iowait_ms"`
	}
	var reid []line
	ours := map[string]bool{} // vm ids
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l line
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		switch l.Msg {
		case "guest re-identified":
			reid = append(reid, l)
		case "vm ready (warm)":
			if !strings.HasPrefix(l.VM, prefix) || !strings.HasSuffix(l.VM, suffix) {
				continue
			}
			ours[l.VMID] = true
			var ms map[string]any
			json.Unmarshal(sc.Bytes(), &ms)
			for _, k := range []string{"disk", "network", "restore", "agent", "agent_connect", "agent_handshake", "agent_retry", "reidentify", "record", "ready"} {
				if v, ok := ms[k+"_ms"].(float64); ok {
					add("engine: "+k, time.Duration(v*float64(time.Millisecond)))
				}
			}
		}
	}
	for _, l := range reid {
		if !ours[l.VMID] {
			continue
		}
		// "reseed rng=1ms, set clock=0ms, ...": names may hold ", ".
		for _, part := range strings.Split(l.Steps, "ms, ") {
			i := strings.LastIndex(part, "=")
			if i < 0 {
				continue
			}
			ms, err := time.ParseDuration(strings.TrimSuffix(part[i+1:], "ms") + "ms")
			if err == nil {
				add("guest: "+part[:i], ms)
			}
		}
		if l.Net > 0 {
			add("guest: (eth0 move, beside the steps)", time.Duration(l.Net)*time.Millisecond)
		}
		add("guest: whole call (host side)", time.Duration(l.Took)*time.Millisecond)
		if l.Wall != nil {
			add("guest cpu: wall", time.Duration(*l.Wall)*time.Millisecond)
			add("guest cpu: agent", time.Duration(l.Agent)*time.Millisecond)
			add("guest cpu: others", time.Duration(max(0, l.Busy-l.Agent))*time.Millisecond)
			add("guest cpu: iowait", time.Duration(l.IOWait)*time.Millisecond)
		}
	}
	return steps
}
