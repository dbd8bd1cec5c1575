package scheduler

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
)

func host(name string, cpus int, memMiB, diskMiB int64, usedCPUs int, usedMem int64) Host {
	return Host{ID: "id-" + name, Name: name, Schedulable: true, CPUs: cpus, MemoryMiB: memMiB, DiskFreeMiB: diskMiB, UsedCPUs: usedCPUs, UsedMemoryMiB: usedMem}
}

func TestSchedule(t *testing.T) {
	cordoned := host("c", 64, 1<<20, 1<<20, 0, 0)
	cordoned.Schedulable, cordoned.Why = false, "cordoned"
	gone := host("u", 64, 1<<20, 1<<20, 0, 0)
	gone.Schedulable, gone.Why = false, "unreachable"
	small := host("small", 2, 4096, 50000, 0, 0) // mem cap 6144 at 1.5
	big := host("big", 16, 65536, 500000, 4, 8192)
	half := host("half", 8, 16384, 100000, 4, 12288)
	vm := Request{CPUs: 1, MemoryMiB: 1024, DiskMiB: 2048}
	for _, tc := range []struct {
		name  string
		hosts []Host
		req   Request
		cfg   Config
		want  string
		class *errs.Class
		msg   string
	}{
		{name: "spread picks the emptiest", hosts: []Host{small, big, half}, req: vm, want: "big"},
		{name: "binpack picks the fullest that fits", hosts: []Host{small, big, half}, req: vm, cfg: Config{Policy: Binpack}, want: "half"},
		{name: "cordoned and unreachable skipped", hosts: []Host{cordoned, gone, small}, req: vm, want: "small"},
		{name: "memory overcommit 1.5 lets 6 GiB on 4 GiB", hosts: []Host{host("h", 8, 4096, 1e6, 0, 5120)}, req: vm, want: "h"},
		{name: "beyond the memory ratio", hosts: []Host{host("h", 8, 4096, 1e6, 0, 5121)}, req: vm, class: errs.ResourceExhausted, msg: "memory"},
		{name: "ratio 1 is no overcommit", hosts: []Host{host("h", 8, 4096, 1e6, 0, 3072)}, req: vm, cfg: Config{MemoryOvercommit: 1}, want: "h"},
		{name: "ratio 1 refuses beyond", hosts: []Host{host("h", 8, 4096, 1e6, 0, 3073)}, req: vm, cfg: Config{MemoryOvercommit: 1}, class: errs.ResourceExhausted},
		{name: "vCPU overcommit", hosts: []Host{host("h", 2, 1e6, 1e6, 8, 0)}, req: vm, class: errs.ResourceExhausted, msg: "0 of 8 vCPUs free"},
		{name: "disk", hosts: []Host{host("h", 8, 1e6, 2047, 0, 0)}, req: vm, class: errs.ResourceExhausted, msg: "2047 MiB disk free"},
		{name: "none fits names each host", hosts: []Host{cordoned, host("h", 8, 1e6, 10, 0, 0)}, req: vm, class: errs.ResourceExhausted, msg: "c: cordoned; h: 10 MiB disk free"},
		{name: "no hosts", req: vm, class: errs.ResourceExhausted},
		{name: "pin by name", hosts: []Host{big, small}, req: Request{CPUs: 1, MemoryMiB: 512, Host: "small"}, want: "small"},
		{name: "pin by id", hosts: []Host{big, small}, req: Request{CPUs: 1, MemoryMiB: 512, Host: "id-small"}, want: "small"},
		{name: "pin on a cordoned host", hosts: []Host{cordoned, big}, req: Request{CPUs: 1, MemoryMiB: 512, Host: "c"}, class: errs.FailedPrecondition, msg: "cordoned"},
		{name: "pin without room", hosts: []Host{small}, req: Request{CPUs: 1, MemoryMiB: 8192, Host: "small"}, class: errs.ResourceExhausted},
		{name: "pin on no host", hosts: []Host{small}, req: Request{CPUs: 1, MemoryMiB: 512, Host: "nope"}, class: errs.NotFound},
		{name: "bad request", hosts: []Host{small}, req: Request{}, class: errs.InvalidArgument},
		{name: "bad policy", hosts: []Host{small}, req: vm, cfg: Config{Policy: "random"}, class: errs.InvalidArgument},
		{name: "ties go by name", hosts: []Host{host("b", 4, 4096, 1e6, 0, 0), host("a", 4, 4096, 1e6, 0, 0)}, req: vm, want: "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i, err := Schedule(tc.hosts, tc.req, tc.cfg)
			if tc.class != nil {
				if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("got %d, %v; want %v containing %q", i, err, tc.class, tc.msg)
				}
				return
			}
			if err != nil || tc.hosts[i].Name != tc.want {
				t.Fatalf("got %d, %v; want %s", i, err, tc.want)
			}
		})
	}
}

// TestSpreadEvensOut: placing many VMs one by one spreads them evenly
// and binpack fills one host before the next.
func TestSpreadEvensOut(t *testing.T) {
	for _, p := range []Policy{Spread, Binpack} {
		hosts := []Host{host("a", 8, 8192, 1e6, 0, 0), host("b", 8, 8192, 1e6, 0, 0), host("c", 8, 8192, 1e6, 0, 0)}
		for n := 0; n < 6; n++ {
			i, err := Schedule(hosts, Request{CPUs: 1, MemoryMiB: 1024}, Config{Policy: p})
			if err != nil {
				t.Fatal(err)
			}
			hosts[i].UsedCPUs++
			hosts[i].UsedMemoryMiB += 1024
		}
		got := fmt.Sprint(hosts[0].UsedCPUs, hosts[1].UsedCPUs, hosts[2].UsedCPUs)
		want := map[Policy]string{Spread: "2 2 2", Binpack: "6 0 0"}[p]
		if got != want {
			t.Errorf("%s: vms per host %s, want %s", p, got, want)
		}
	}
}

// BenchmarkSchedule: 1,000 placements against 100 hosts per iteration
// (the target is under 20 ms).
func BenchmarkSchedule(b *testing.B) {
	base := make([]Host, 100)
	for i := range base {
		base[i] = host(fmt.Sprintf("h%03d", i), 32, 131072, 2e6, i%7, int64(i%5)*4096)
		if i%10 == 0 {
			base[i].Schedulable, base[i].Why = false, "cordoned"
		}
	}
	hosts := make([]Host, len(base))
	for b.Loop() {
		copy(hosts, base)
		for n := 0; n < 1000; n++ {
			i, err := Schedule(hosts, Request{CPUs: 1 + n%2, MemoryMiB: 512, DiskMiB: 2048}, Config{})
			if err != nil {
				b.Fatal(err)
			}
			hosts[i].UsedCPUs += 1 + n%2
			hosts[i].UsedMemoryMiB += 512
			hosts[i].DiskFreeMiB -= 2048
		}
	}
}
