package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/movepause"
	"github.com/minionsdev/minions/store"
)

// crashStep is one step of a move at which a process is paused (by the
// test-only hook internal/movepause) and a victim killed with SIGKILL.
type crashStep struct {
	mode   string // the move's mode: "cold", "memory", "live"; "-in" onto the control plane's host, "-out" off it
	step   string // a movepause step
	pauser string // who pauses there: "cp", "src" (the source's node agent) or "dst"
	what   string // what the step is, for the log
}

// crashSteps are the steps of each kind of move. To add `move --memory`
// or `move --live`, add their rows (and their pause points).
var crashSteps = []crashStep{
	{"cold", movepause.Stopped, "cp", "the source is stopped, nothing shipped"},
	{"cold", movepause.Transfer, "src", "mid-transfer: part of the disk stream sent"},
	{"cold", movepause.Imported, "dst", "the target's disk in place, before its boot"},
	{"cold", movepause.Started, "cp", "the target's copy runs, before the switch"},
	{"cold", movepause.Switched, "cp", "switched, before the source's copy is destroyed"},
	{"memory", movepause.PreCopy, "src", "mid-pre-copy: part of the RAM sent while the VM runs, nothing suspended"},
	{"memory", movepause.Suspended, "cp", "the source suspended (memory saved), nothing shipped"},
	{"memory", movepause.Transfer, "src", "mid-transfer: part of the bundle sent"},
	{"memory", movepause.Imported, "dst", "the target imported the bundle, before its resume"},
	{"memory", movepause.Switched, "cp", "switched, before the source's copy is destroyed"},
	{"live", movepause.Prepared, "cp", "the target's copy prepared, nothing sent"},
	{"live", movepause.Mirrored, "src", "mid-mirror: the disk mirror in sync, before the memory"},
	{"live", movepause.Migrated, "cp", "the migration completed, before the switch"},
	{"live", movepause.Switched, "cp", "switched and resumed, before the source's copy is destroyed"},
	// Live moves onto the control plane's own host (from a node) and off
	// it (to n1): there the control plane is the target or the source.
	{"live-in", movepause.Prepared, "cp", "the control plane's staged copy waits, nothing sent"},
	{"live-in", movepause.Mirrored, "src", "mid-mirror to the control plane's host, before the memory"},
	{"live-in", movepause.Migrated, "cp", "migrated to the control plane's host, before the switch"},
	{"live-in", movepause.Switched, "cp", "switched to the control plane's host and resumed, before the source's copy is destroyed"},
	{"live-out", movepause.Prepared, "cp", "the target's copy prepared, nothing sent from the control plane's host"},
	{"live-out", movepause.Mirrored, "src", "mid-mirror from the control plane's host, before the memory"},
	{"live-out", movepause.Migrated, "cp", "migrated off the control plane's host, before the switch"},
	{"live-out", movepause.Switched, "cp", "the target resumed, before the control plane's copy is destroyed"},
	// Moves with memory onto the control plane's own host (from a node:
	// its engine keeps the node's pre-copy and stages the bundle, the VM
	// resumes after the switch) and off it (to a node: its engine writes
	// the pre-copy and the bundle into the node's import). The control
	// plane's process pauses where it is the target ("dst" at imported)
	// or the source ("src" at precopy and transfer).
	{"memory-in", movepause.PreCopy, "src", "mid-pre-copy to the control plane's host, nothing suspended"},
	{"memory-in", movepause.Suspended, "cp", "the source suspended, nothing shipped to the control plane's host"},
	{"memory-in", movepause.Transfer, "src", "mid-transfer of the bundle to the control plane's host"},
	{"memory-in", movepause.Imported, "dst", "the bundle staged on the control plane's host, before the switch"},
	{"memory-in", movepause.Switched, "cp", "switched to the control plane's host and resumed, before the source's copy is destroyed"},
	{"memory-out", movepause.PreCopy, "src", "mid-pre-copy from the control plane's host, nothing suspended"},
	{"memory-out", movepause.Suspended, "cp", "the control plane's copy suspended, nothing shipped"},
	{"memory-out", movepause.Transfer, "src", "mid-transfer of the bundle from the control plane's host"},
	{"memory-out", movepause.Imported, "dst", "the target imported the bundle, before its resume"},
	{"memory-out", movepause.Switched, "cp", "the target resumed, before the control plane's copy is destroyed"},
}

// crashVictims are the processes killed at each step.
var crashVictims = []string{"src", "dst", "cp"}

// crashQuick are the cases run without MINIONS_E2E_FULL=1: each step and
// each victim at least once, the pauser killed and not.
var crashQuick = map[string]bool{
	"cold/stopped/src":  true,
	"cold/transfer/dst": true,
	"cold/imported/cp":  true,
	"cold/started/src":  true,
	"cold/switched/cp":  true,

	"memory/precopy/cp":    true,
	"memory/suspended/src": true,
	"memory/transfer/cp":   true,
	"memory/imported/dst":  true,
	"memory/switched/cp":   true,

	"live/prepared/dst": true,
	"live/mirrored/src": true,
	"live/migrated/cp":  true,

	// Back in the quick set: live/switched/src (a VM moved live once came
	// up rebooted on the target: QEMU 7.2 under TCG lost guest RAM writes
	// in a live migration, fixed by the RAM size, qemu/ramsize.go) and
	// live-in/migrated/cp (after it the next live move onto the control
	// plane's host once failed in blockdev-add: NBD "Unexpected
	// end-of-file" in option negotiation; not seen again, and such an
	// error now says what went through the channel and which side ended
	// it).
	"live/switched/src":    true,
	"live-in/migrated/cp":  true,
	"live-out/mirrored/cp": true,

	// Moves with memory onto and off the control plane's host (where
	// it is the target, victim "dst" is "cp"; the source, "src" is): the
	// pre-copy with each of the two processes killed, paused or not, in
	// each direction; every other step once.
	"memory-in/precopy/src":   true,
	"memory-in/precopy/cp":    true,
	"memory-out/precopy/src":  true,
	"memory-out/precopy/dst":  true,
	"memory-in/suspended/src": true,
	"memory-out/transfer/dst": true,
	"memory-in/imported/cp":   true,
	"memory-out/switched/dst": true,
}

// keepsMemory reports whether the guest's memory must survive a crash
// case of mode: a memory move resumes the source from its saved memory
// (before the switch) or runs on at the target resumed from it (after);
// a live move resumes the source (before) or the target runs on (after).
// Only a cold move reboots the guest.
func keepsMemory(mode string) bool { return mode != "cold" }

// TestMultiHostMoveCrash is issue 15's durability proof on real QEMU VMs
// and a cluster of its own (a control plane and two nodes in netns, see
// multihost_harness_test.go): for each step of a move and each victim
// (source node agent, target node agent, control plane), the move is
// brought to the step, the victim killed with SIGKILL and restarted, and
// once settled exactly one copy of the VM runs: one QEMU across both
// nodes, on the host `show --json` names, answering exec, with its disk's
// marker file, and for memory and live moves the same counter process
// (keepsMemory); the other node has nothing of it (QEMU, state or run
// dir, TAP, RAM file, row and address in its store). No moment with two
// QEMUs is tolerated, but in a live move (whose target waits paused for
// the migration before the switch and whose source is paused after it)
// until it settled. One VM is reused, moving between n1 and n2 from case to case.
//
// The quick cases (crashQuick) run by default; MINIONS_E2E_FULL=1 runs
// every step against every victim. (Seen in the full matrix before two
// fixes: memory/imported/dst after memory/imported/src did not settle,
// "Capability x-ignore-shared is on, but received capability is off", a
// saved state recording the wrong x-ignore-shared setting, fixed with
// TestRestoreCopyTwice; and the nodes of this cluster shared one RAM file
// directory, now one per installation: local.MemoryDir. The memory-in
// and memory-out rows found three more: a VM moved in live had no RAM
// file of its own, so its next move with memory made no pre-copy and
// memory-in/precopy/cp never paused (qemu StartIncoming now gives it one,
// TestLiveMigration); a pre-copy's RAM file left by a killed importer
// stayed a minute, so three cases took a minute to settle (now swept after
// 5 s, TestSweepMemoryPreCopy); and a pre-copy whose source restarted was
// tried four more times with back-off, 18 s, before the whole bundle
// shipped (TestPreCopyResumeGivesUpOnALostSource).)
//
//	MINIONS_E2E_DEBIAN=0 go test -count=1 -run 'TestMultiHostMoveCrash$' -v ./e2e/
func TestMultiHostMoveCrash(t *testing.T) {
	began := time.Now()
	c := newCluster(t)
	for _, h := range c.hosts {
		dir := filepath.Join(h.dir, "pause")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		h.extraEnv = append(h.extraEnv, movepause.Env+"="+dir)
	}
	c.startJoined(t)
	ann := c.addUser(t, "ann")
	r := c.as(t, ann, "", "create", "crash", "--memory", "256", "--host", "n1", "--json")
	if r.code != 0 {
		t.Fatalf("create crash --host n1: %s", r)
	}
	var v vmJSON
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("marker of test %d", c.pid)
	if r := c.as(t, ann, "", "exec", "crash", "--", "sh", "-c", "echo '"+marker+"' > /root/marker; sync"); r.code != 0 {
		t.Fatalf("write the marker: %s", r)
	}
	t.Logf("cluster and VM ready in %s", time.Since(began).Round(time.Millisecond))

	full := os.Getenv("MINIONS_E2E_FULL") == "1"
	c.cpHostName = c.hostList(t)["cp"].Name
	at := c.n1
	var table []string
cases:
	for _, st := range crashSteps {
		for _, victim := range crashVictims {
			name := st.mode + "/" + st.step + "/" + victim
			if !full && !crashQuick[name] {
				continue
			}
			start := time.Now()
			var where string
			ran := false
			ok := t.Run(name, func(t *testing.T) {
				ran = true
				pid := counterPID(t, c, ann)
				at = crashCase(t, c, ann, v.ID, marker, at, st, victim)
				where = at.name
				if keepsMemory(st.mode) {
					checkCounter(t, c, ann, pid)
				}
			})
			if !ran {
				continue // not matched by -run
			}
			table = append(table, fmt.Sprintf("%-24s %-5s -> on %s after %s", name, map[bool]string{true: "ok", false: "FAIL"}[ok], where, time.Since(start).Round(time.Second)))
			if !ok {
				t.Logf("stopping after the failed case %s", name)
				break cases
			}
		}
	}
	t.Logf("kill -9 during moves (step/victim, where the one copy ended, time):\n%s\ntotal %s", strings.Join(table, "\n"), time.Since(began).Round(time.Second))
}

// crashCase moves VM id (running on host at) to the other node, pauses it
// at st, kills victim, restarts it, and checks the settled state. It
// returns the host the VM ends on.
func crashCase(t *testing.T, c *mhCluster, u mhUser, id, marker string, at *mhHost, st crashStep, victim string) *mhHost {
	// live-in and memory-in move from a node onto the control plane's
	// host, live-out and memory-out from it to a node: first bring the
	// VM where the case starts.
	in, out := strings.HasSuffix(st.mode, "-in"), strings.HasSuffix(st.mode, "-out")
	switch {
	case in && at == c.cp:
		at = placeLive(t, c, u, c.n1)
	case out && at != c.cp:
		at = placeLive(t, c, u, c.cp)
	case !in && !out && at == c.cp:
		at = placeLive(t, c, u, c.n1)
	}
	src, dst := at, c.n2
	switch {
	case in:
		dst = c.cp
	case at == c.n2:
		dst = c.n1
	}
	role := map[string]*mhHost{"cp": c.cp, "src": src, "dst": dst}
	pauser, killed := role[st.pauser], role[victim]
	pauseDir := filepath.Join(pauser.dir, "pause")
	paused := filepath.Join(pauseDir, "move-paused-"+st.step)
	if err := os.WriteFile(filepath.Join(pauseDir, "move-pause-"+st.step), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(filepath.Join(pauseDir, "move-pause-"+st.step))
	defer os.Remove(paused)
	t.Logf("move %s -> %s (%s), paused by %s at %s (%s), kill -9 %s (%s)", src.name, dst.name, st.mode, pauser.name, st.step, st.what, victim, killed.name)

	args := []string{"move", "crash", "--host", c.rowName(dst), "--json"}
	switch st.mode {
	case "memory", "memory-in", "memory-out":
		args = append(args, "--memory")
	case "live", "live-in", "live-out":
		args = append(args, "--live")
	}
	moved := make(chan result, 1)
	go func() { moved <- c.as(t, u, "", args...) }()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(paused); err == nil {
			break
		}
		select {
		case r := <-moved:
			t.Fatalf("the move ended before pausing at %s: %s", st.step, r)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pause at %s in 2 min", st.step)
		}
		time.Sleep(50 * time.Millisecond)
	}
	killed.agent.kill(t, syscall.SIGKILL)
	if pauser != killed {
		// The survivors go on while the victim is dead.
		os.Remove(paused)
		time.Sleep(2 * time.Second)
	}
	restart := time.Now()
	if killed == c.cp {
		c.startControlPlane(t)
	} else {
		c.startNode(t, killed, "node")
	}
	os.Remove(paused)
	var r result
	select {
	case r = <-moved:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the move command did not end 3 min after the restart")
	}
	t.Logf("move exited %d after the kill: %s", r.code, strings.TrimSpace(lastLines(r.stdout+r.stderr, 3)))

	// Settled: exactly one copy, on the host show names, nothing of it
	// on the other; two QEMUs at any moment is a failure at once.
	var last string
	deadline = time.Now().Add(2 * time.Minute)
	for {
		procs := map[*mhHost][]int{c.cp: c.cp.vmProcs(id), c.n1: c.n1.vmProcs(id), c.n2: c.n2.vmProcs(id)}
		// A live move has two QEMUs by design until it settles: the
		// target's waits paused for the migration (before the switch), the
		// source's is paused once it handed over (after it).
		if len(procs[c.cp])+len(procs[c.n1])+len(procs[c.n2]) > 1 && !strings.HasPrefix(st.mode, "live") {
			t.Fatalf("two copies run: cp %v, n1 %v, n2 %v", procs[c.cp], procs[c.n1], procs[c.n2])
		}
		on, why := settledOn(t, c, u, id, marker, procs)
		if on != nil {
			t.Logf("settled on %s %s after the restart; the cp said:\n%s", on.name, time.Since(restart).Round(time.Millisecond), moveLines(c.cp.agent.log.String(), 6))
			return on
		}
		last = why
		if time.Now().After(deadline) {
			t.Fatalf("not settled 2 min after the restart: %s\nn1 log:\n%s\nn2 log:\n%s", last,
				lastLines(c.n1.agent.log.String(), 20), lastLines(c.n2.agent.log.String(), 20))
		}
		time.Sleep(time.Second)
	}
}

// settledOn returns the host holding the one copy of VM id when the
// cluster is settled, or nil and why not. procs are the QEMUs of the VM on
// each host.
func settledOn(t *testing.T, c *mhCluster, u mhUser, id, marker string, procs map[*mhHost][]int) (*mhHost, string) {
	var on *mhHost
	var offs []*mhHost
	var q []int
	for _, h := range []*mhHost{c.cp, c.n1, c.n2} {
		if len(procs[h]) > 0 {
			on = h
		} else {
			offs = append(offs, h)
		}
		q = append(q, procs[h]...)
	}
	if len(q) != 1 {
		return nil, fmt.Sprintf("QEMUs cp %v n1 %v n2 %v", procs[c.cp], procs[c.n1], procs[c.n2])
	}
	v, r := c.show(t, u, "crash")
	if r.code != 0 || v.ID != id || v.Status != "running" || v.hostOf() != c.rowName(on) {
		return nil, fmt.Sprintf("QEMU on %s; show: %s", on.name, r)
	}
	var list []json.RawMessage
	if r := c.as(t, u, "", "list", "--json"); r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil || len(list) != 1 {
		return nil, fmt.Sprintf("list --json: %s", r)
	}
	if r := c.as(t, u, "", "exec", "crash", "cat", "/root/marker"); r.code != 0 || strings.TrimSpace(r.stdout) != marker {
		return nil, fmt.Sprintf("exec on %s: %s", on.name, r)
	}
	for _, off := range offs {
		if left := vmTraces(off, id); len(left) != 0 {
			return nil, fmt.Sprintf("%s keeps %v", off.name, left)
		}
		// The control plane's store keeps its row of the VM wherever it
		// runs (show checked it names the host).
		if row, ok := nodeRow(off, id); ok && off != c.cp {
			return nil, fmt.Sprintf("%s's store keeps the vm (address %s)", off.name, row)
		}
	}
	if left := ramLeaks(id, q[0]); len(left) != 0 {
		return nil, fmt.Sprintf("RAM files of the vm not mapped by its QEMU %d: %v", q[0], left)
	}
	// Each host's memory dir, the control plane's own engine's too:
	// no pre-copy import or kept RAM file outlives the move.
	for _, h := range []*mhHost{c.cp, c.n1, c.n2} {
		if left := unmappedRAM(h); len(left) != 0 {
			return nil, fmt.Sprintf("%s keeps RAM files no QEMU maps: %v", h.name, left)
		}
	}
	if _, ok := nodeRow(on, id); !ok {
		return nil, fmt.Sprintf("%s's store has no row of the vm", on.name)
	}
	return on, ""
}

// placeLive moves the crash VM live to host to (no pause, no kill) and
// returns to.
func placeLive(t *testing.T, c *mhCluster, u mhUser, to *mhHost) *mhHost {
	t.Helper()
	if r := c.as(t, u, "", "move", "crash", "--host", c.rowName(to), "--live", "--json"); r.code != 0 {
		t.Fatalf("place the vm on %s: %s", to.name, r)
	}
	return to
}

// nodeRow reports whether host h's own store has a row (and so an
// address) for VM id, and its address.
func nodeRow(h *mhHost, id string) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := store.Open(ctx, filepath.Join(h.state, "minions.db"))
	if err != nil {
		return err.Error(), true
	}
	defer db.Close()
	v, err := store.GetVMByID(ctx, db, id)
	if err != nil {
		return "", false
	}
	return v.IP, true
}

// moveLines is the last n lines of log about moves.
func moveLines(log string, n int) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "move") {
			out = append(out, l)
		}
	}
	return strings.Join(out[max(0, len(out)-n):], "\n")
}

// counterFile is where the guest's counter loop writes (its tmpfs).
const counterFile = "/tmp/crash-counter"

// counterPID returns the PID of the counter loop in the crash VM,
// starting one if none runs (a cold move reboots the guest).
func counterPID(t *testing.T, c *mhCluster, u mhUser) string {
	t.Helper()
	r := c.as(t, u, "", "exec", "crash", "--", "sh", "-c", "cat "+counterFile+".pid 2>/dev/null")
	if pid := strings.TrimSpace(r.stdout); r.code == 0 && pid != "" {
		if c.as(t, u, "", "exec", "crash", "--", "kill", "-0", pid).code == 0 {
			return pid
		}
	}
	r = c.as(t, u, "", "exec", "crash", "--", "sh", "-c",
		`setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > `+counterFile+`.new; mv `+counterFile+`.new `+counterFile+`; sleep 0.2; done' </dev/null >/dev/null 2>&1 & echo $! | tee `+counterFile+`.pid`)
	pid := strings.TrimSpace(r.stdout)
	if r.code != 0 || pid == "" {
		t.Fatalf("start the counter: %s", r)
	}
	return pid
}

// checkCounter fails unless the counter loop pid still runs in the crash
// VM (its memory survived) and counts on.
func checkCounter(t *testing.T, c *mhCluster, u mhUser, pid string) {
	t.Helper()
	read := func() (string, int) {
		r := c.as(t, u, "", "exec", "crash", "--", "sh", "-c", "tr '\\0' ' ' </proc/"+pid+"/cmdline; echo; cat "+counterFile)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		n := 0
		if r.code == 0 && len(lines) == 2 {
			fmt.Sscan(lines[1], &n)
			return lines[0], n
		}
		return strings.TrimSpace(r.stdout + r.stderr), -1
	}
	cmd1, n1 := read()
	deadline := time.Now().Add(15 * time.Second)
	for {
		cmd2, n2 := read()
		if n1 > 0 && n2 > n1 && strings.Contains(cmd2, counterFile) {
			t.Logf("the guest's memory survived: counter pid %s counts on (%d, then %d)", pid, n1, n2)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's memory did not survive: counter pid %s: %q %d, then %q %d", pid, cmd1, n1, cmd2, n2)
		}
		if n1 <= 0 {
			cmd1, n1 = cmd2, n2 // the first read found no count yet
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// ramFilesDir holds every installation's RAM file directory
// (local.MemoryDir: one per state directory, so the nodes of the test
// cluster, which share the machine's /dev/shm, do not share files).
const ramFilesDir = "/dev/shm/minions"

// ramLeaks lists the RAM files of VM id that QEMU pid qemu does not map:
// left behind by a copy that is gone.
func ramLeaks(id string, qemu int) []string {
	files, _ := filepath.Glob(filepath.Join(ramFilesDir, "*", "*"+id+"*"))
	if len(files) == 0 {
		return nil
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", qemu))
	if err != nil {
		return []string{err.Error()}
	}
	mapped := map[uint64]bool{}
	for _, l := range strings.Split(string(maps), "\n") {
		if f := strings.Fields(l); len(f) >= 5 {
			var ino uint64
			fmt.Sscan(f[4], &ino)
			mapped[ino] = ino != 0
		}
	}
	var out []string
	for _, f := range files {
		var st syscall.Stat_t
		if syscall.Stat(f, &st) == nil && !mapped[st.Ino] {
			out = append(out, f)
		}
	}
	return out
}
