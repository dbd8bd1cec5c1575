package cpus

import (
	"runtime"
	"slices"
	"sync"
	"testing"
)

// fake records what a Governor sets.
type fake struct {
	mu    sync.Mutex
	procs int // 0: the default
	calls []int
}

func (f *fake) set(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.procs = n
	f.calls = append(f.calls, n)
}

func noEnv(string) string { return "" }

func TestHoldRaisesAndReleaseLowers(t *testing.T) {
	f := &fake{}
	g := New(f.set, noEnv)
	if !g.Enable(1) {
		t.Fatal("Enable = false with no GOMAXPROCS in the environment")
	}
	if f.procs != 1 || g.Procs() != 1 {
		t.Fatalf("after Enable: procs %d (governor %d), want 1", f.procs, g.Procs())
	}
	release := g.Hold("move disk export")
	if f.procs != 0 {
		t.Fatalf("while held: procs %d, want 0 (the default)", f.procs)
	}
	if h := g.Holders(); !slices.Equal(h, []string{"move disk export"}) {
		t.Fatalf("holders %q", h)
	}
	release()
	if f.procs != 1 || len(g.Holders()) != 0 {
		t.Fatalf("after release: procs %d holders %q, want 1 and none", f.procs, g.Holders())
	}
	release() // idempotent
	if want := []int{1, 0, 1}; !slices.Equal(f.calls, want) {
		t.Fatalf("set calls %v, want %v", f.calls, want)
	}
}

func TestNestedHoldsLowerAfterTheLast(t *testing.T) {
	f := &fake{}
	g := New(f.set, noEnv)
	g.Enable(1)
	a := g.Hold("image build")
	b := g.Hold("image build") // the same name twice: two holds
	c := g.Hold("move memory")
	a()
	a()
	if f.procs != 0 {
		t.Fatalf("two holds left: procs %d, want the default", f.procs)
	}
	c()
	if f.procs != 0 || !slices.Equal(g.Holders(), []string{"image build"}) {
		t.Fatalf("one hold left: procs %d holders %q", f.procs, g.Holders())
	}
	b()
	if f.procs != 1 {
		t.Fatalf("no holds: procs %d, want 1", f.procs)
	}
	if want := []int{1, 0, 1}; !slices.Equal(f.calls, want) {
		t.Fatalf("set calls %v, want %v (one change per edge only)", f.calls, want)
	}
}

func TestConcurrentHolders(t *testing.T) {
	f := &fake{}
	g := New(f.set, noEnv)
	g.Enable(1)
	outer := g.Hold("outer")
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				r := g.Hold("stream")
				if g.Procs() != 0 {
					t.Error("held, yet not at the default")
				}
				r()
			}
		}()
	}
	wg.Wait()
	if f.procs != 0 {
		t.Fatalf("outer still holds: procs %d", f.procs)
	}
	outer()
	if f.procs != 1 || len(g.Holders()) != 0 {
		t.Fatalf("all released: procs %d holders %q", f.procs, g.Holders())
	}
}

func TestExplicitEnvironmentIsNeverChanged(t *testing.T) {
	f := &fake{}
	g := New(f.set, func(k string) string {
		if k == "GOMAXPROCS" {
			return "2"
		}
		return ""
	})
	if g.Enable(1) {
		t.Fatal("Enable = true with GOMAXPROCS=2 in the environment")
	}
	r := g.Hold("image build")
	r()
	g.Disable()
	if len(f.calls) != 0 {
		t.Fatalf("set called %v with GOMAXPROCS in the environment", f.calls)
	}
}

func TestHoldBeforeEnableAndDisable(t *testing.T) {
	f := &fake{}
	g := New(f.set, noEnv)
	r := g.Hold("move") // not governing yet: nothing changes
	if len(f.calls) != 0 {
		t.Fatalf("set calls %v before Enable", f.calls)
	}
	g.Enable(1) // a hold is taken: stays at the default
	if len(f.calls) != 0 {
		t.Fatalf("set calls %v: Enable lowered despite a hold", f.calls)
	}
	r()
	if f.procs != 1 {
		t.Fatalf("after the release: procs %d, want 1", f.procs)
	}
	g.Disable()
	g.Disable()
	if f.procs != 0 || g.Procs() != 0 {
		t.Fatalf("after Disable: procs %d, want the default", f.procs)
	}
	g.Hold("late")()
	if want := []int{1, 0}; !slices.Equal(f.calls, want) {
		t.Fatalf("set calls %v, want %v", f.calls, want)
	}
}

// TestRuntime governs this test process's own runtime.
func TestRuntime(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("one CPU: nothing to lower")
	}
	def := runtime.GOMAXPROCS(0)
	g := New(Default.set, noEnv)
	t.Cleanup(g.Disable)
	g.Enable(1)
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("enabled: GOMAXPROCS %d, want 1", n)
	}
	r := g.Hold("test")
	if n := runtime.GOMAXPROCS(0); n != def {
		t.Fatalf("held: GOMAXPROCS %d, want %d", n, def)
	}
	r()
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("released: GOMAXPROCS %d, want 1", n)
	}
	g.Disable()
	if n := runtime.GOMAXPROCS(0); n != def {
		t.Fatalf("disabled: GOMAXPROCS %d, want %d", n, def)
	}
}
