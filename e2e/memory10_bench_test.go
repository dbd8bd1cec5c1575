package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// mem10VMs is how many VMs BenchmarkMemoryTenVMs runs of each kind
// ($MINIONS_BENCH_VMS overrides it).
const mem10VMs = 10

// mem10MiB is each VM's (and the template's) memory.
const mem10MiB = 512

// BenchmarkMemoryTenVMs measures issue 16's memory target: N idle minimal
// VMs of 512 MiB warm-created from one template against N cold-booted
// ones, on one engine (TCG, jail off unless MINIONS_E2E_MEM_JAIL=1; bridge mnmem10,
// subnet 10.221.0.0/24). For each fleet it sums the PSS
// (/proc/PID/smaps_rollup) of every VM's QEMU and helper processes (agent
// relay, console logger) once the guests have settled, and reports the
// totals, their ratio (warm/cold; target <= 0.5) and where the pages are
// (anonymous, file, shmem). The fleets run one after the other (the warm
// one is destroyed first) and VMs are created one at a time.
//
//	MINIONS_E2E_DEBIAN=0 go test -run '^$' -bench BenchmarkMemoryTenVMs -benchtime 1x -timeout 30m ./e2e/
func BenchmarkMemoryTenVMs(b *testing.B) {
	if skipWhy != "" {
		b.Skip(skipWhy)
	}
	n := mem10VMs
	if s := os.Getenv("MINIONS_BENCH_VMS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("MINIONS_BENCH_VMS=%q: want a positive number", s)
		}
	}
	// MINIONS_E2E_MEM_JAIL=1: the VMs jailed, as `minions serve` runs them
	// by default; the warm fleet then maps the template's sealed memfd,
	// which this process (the engine) holds, and the whole of it is
	// added to the warm fleet's total (an upper bound: the pages the
	// clones map are in their PSS already).
	jailed := os.Getenv("MINIONS_E2E_MEM_JAIL") == "1"
	w := newWarmEngineWith(b, "mnmem10", "10.221.0.0/24", nil, jailed)
	ctx := context.Background()
	tpl, err := w.l.WarmTemplate(ctx, "minimal", 1, mem10MiB, 0, nil)
	if err != nil {
		b.Fatalf("warm template: %v", err)
	}
	b.Logf("template %s built in %d ms (jail %v)", tpl.Key, tpl.BuildMillis, jailed)

	var warm, cold fleetMem
	for b.Loop() {
		warm = w.fleetMemory(b, n, false)
		cold = w.fleetMemory(b, n, true)
	}
	memfdKiB := templateMemfdKiB(b, tpl.Key)
	warm.total.PSS += memfdKiB
	warm.total.Shmem += memfdKiB
	if jailed {
		b.Logf("the template's sealed memfd: %d KiB, added to the warm fleet's total", memfdKiB)
	}
	ratio := float64(warm.total.PSS) / float64(cold.total.PSS)
	b.ReportMetric(float64(warm.total.PSS)/1024, "warm-pss-MiB")
	b.ReportMetric(float64(cold.total.PSS)/1024, "cold-pss-MiB")
	b.ReportMetric(ratio, "warm/cold")

	t := &table{title: fmt.Sprintf("BenchmarkMemoryTenVMs: %d idle VMs of %d MiB each, total host PSS of their QEMU and helper processes (MiB)", n, mem10MiB),
		head: []string{"fleet", "pss", "anon", "file", "shmem", "rss", "qemu pss/vm", "helpers pss/vm"}}
	for _, f := range []struct {
		name string
		m    fleetMem
	}{{"warm (template)", warm}, {"cold (boot)", cold}} {
		t.add(f.name, mib(f.m.total.PSS), mib(f.m.total.Anon), mib(f.m.total.File), mib(f.m.total.Shmem), mib(f.m.total.RSS),
			mib(f.m.qemu.PSS/int64(n)), mib(f.m.helpers.PSS/int64(n)))
	}
	t.print()
	fmt.Fprintf(os.Stderr, "memory of %d idle VMs: warm %s MiB, cold %s MiB, ratio %.2f (target <= 0.5)\n",
		n, mib(warm.total.PSS), mib(cold.total.PSS), ratio)
}

// templateMemfdKiB is what this process's sealed memfds of template key
// hold, in KiB (qemu's jailed clones map them; template_memfd_linux.go).
func templateMemfdKiB(b *testing.B, key string) int64 {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		b.Fatal(err)
	}
	var kib int64
	for _, e := range ents {
		p := filepath.Join("/proc/self/fd", e.Name())
		if l, err := os.Readlink(p); err == nil && strings.HasPrefix(l, "/memfd:minions-template-"+key) {
			var st unix.Stat_t
			if unix.Stat(p, &st) == nil {
				kib += st.Blocks * 512 / 1024
			}
		}
	}
	return kib
}

// fleetMem is the memory of a fleet of VMs, in KiB.
type fleetMem struct {
	total, qemu, helpers smapsRollup
}

// fleetMemory creates n VMs (warm from the template, or cold), lets them
// settle, measures them (the median of three samples of the total) and
// destroys them.
func (w *warmEngine) fleetMemory(b *testing.B, n int, cold bool) fleetMem {
	b.Helper()
	ctx := context.Background()
	kind := map[bool]string{false: engine.BootWarm, true: engine.BootCold}[cold]
	var insts []engine.Instance
	defer func() {
		for _, inst := range insts {
			w.l.Destroy(context.Background(), inst.ID)
		}
	}()
	for i := range n {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		inst, err := w.l.Create(cctx, engine.CreateSpec{ID: vm.NewID(), Name: fmt.Sprintf("mem10-%s-%d", kind, i), Owner: w.owner,
			Image: "minimal", CPUs: 1, MemoryMiB: mem10MiB, Cold: cold}, nil)
		cancel()
		if err != nil {
			b.Fatalf("create %s vm %d: %v", kind, i, err)
		}
		insts = append(insts, inst)
		if inst.Boot != kind {
			b.Fatalf("vm %d: boot %q, want %q (warnings %v)", i, inst.Boot, kind, inst.Warnings)
		}
	}
	// Idle guests: their first seconds still touch memory (the agent's
	// start, a cold guest's late boot); then sample three times.
	time.Sleep(5 * time.Second)
	var samples []fleetMem
	for range 3 {
		var f fleetMem
		for _, inst := range insts {
			q, err := readSmapsRollup(inst.PID)
			if err != nil {
				b.Fatalf("qemu of %s: %v", inst.Name, err)
			}
			f.qemu.add(q)
			hs := helperPIDs(inst.ID)
			if len(hs) == 0 {
				b.Fatalf("no helper processes for %s", inst.Name)
			}
			for _, pid := range hs {
				h, err := readSmapsRollup(pid)
				if err != nil {
					b.Fatalf("helper %d of %s: %v", pid, inst.Name, err)
				}
				f.helpers.add(h)
			}
		}
		f.total = f.qemu
		f.total.add(f.helpers)
		samples = append(samples, f)
		time.Sleep(time.Second)
	}
	slices.SortFunc(samples, func(a, b fleetMem) int { return int(a.total.PSS - b.total.PSS) })
	return samples[len(samples)/2]
}

// smapsRollup is part of /proc/PID/smaps_rollup, in KiB.
type smapsRollup struct {
	RSS, PSS, Anon, File, Shmem int64
}

func (s *smapsRollup) add(o smapsRollup) {
	s.RSS += o.RSS
	s.PSS += o.PSS
	s.Anon += o.Anon
	s.File += o.File
	s.Shmem += o.Shmem
}

func readSmapsRollup(pid int) (smapsRollup, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return smapsRollup{}, err
	}
	var s smapsRollup
	fields := map[string]*int64{"Rss:": &s.RSS, "Pss:": &s.PSS, "Pss_Anon:": &s.Anon, "Pss_File:": &s.File, "Pss_Shmem:": &s.Shmem}
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		if p, ok := fields[f[0]]; ok {
			if *p, err = strconv.ParseInt(f[1], 10, 64); err != nil {
				return smapsRollup{}, fmt.Errorf("smaps_rollup of %d: %q: %w", pid, line, err)
			}
			seen++
		}
	}
	if seen != len(fields) {
		return smapsRollup{}, fmt.Errorf("smaps_rollup of %d: %d of %d fields", pid, seen, len(fields))
	}
	return s, nil
}

// helperPIDs are the processes of the minions-relay binary serving VM id
// (agent relay, console logger): their argv names a path in its run dir.
func helperPIDs(id string) []int {
	var out []int
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		argv := bytes.Split(b, []byte{0})
		if len(argv) < 2 || filepath.Base(string(argv[0])) != "minions-relay" || !bytes.Contains(b, []byte("/"+id+"/")) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p, "/proc/%d/cmdline", &pid); err == nil {
			out = append(out, pid)
		}
	}
	return out
}

// mib renders KiB as MiB with one decimal.
func mib(kib int64) string { return strconv.FormatFloat(float64(kib)/1024, 'f', 1, 64) }
