package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// BenchmarkMoveDowntime moves a 512 MiB VM running a counter back and
// forth between two node hosts (n1 <-> n2, netns hosts on one bridge, real
// QEMU under TCG), max(b.N, 3) times, and prints a table: each move's
// wall time as the user sees it, the downtime the move reports (the
// engine's suspend to resume) and the largest gap between the guest's
// counter ticks during it (whole seconds where the guest's date has no
// %N), then their medians. The testing package runs it once with b.N = 1
// before the timed run: each prints its table.
//
//	MINIONS_E2E_DEBIAN=0 go test -count=1 -run '^$' -bench 'MoveDowntime/memory' -benchtime 3x -v ./e2e/
func BenchmarkMoveDowntime(b *testing.B) {
	b.Run("memory", func(b *testing.B) { benchMoveDowntime(b, "memory") })
}

func benchMoveDowntime(b *testing.B, mode string) {
	c := newCluster(b)
	c.startJoined(b)
	u := c.addUser(b, "ann")
	if r := c.as(b, u, "", "create", "mover", "--memory", "512", "--host", "n1", "--json"); r.code != 0 {
		b.Fatalf("create mover on n1: %s", r)
	}
	b.Cleanup(func() { c.as(b, u, "", "destroy", "mover", "--yes") })
	startTicker(b, c, u, "mover")
	rounds := max(b.N, 3)
	var walls, downs, gaps []time.Duration
	var rows []string
	b.ResetTimer()
	for i := range rounds {
		from, to := "n1", "n2"
		if i%2 == 1 {
			from, to = "n2", "n1"
		}
		before := guestCount(b, c, u, "mover")
		wall, down, moved := moveDowntime(b, c, u, "mover", to, mode)
		if moved.hostOf() != to || moved.Status != "running" {
			b.Fatalf("move %d to %s: %+v", i+1, to, moved.Raw)
		}
		gap, _ := tickGap(b, c, u, "mover", before)
		if after := guestCount(b, c, u, "mover"); after < before {
			b.Fatalf("move %d: the count went back from %d to %d", i+1, before, after)
		}
		walls, downs, gaps = append(walls, wall), append(downs, down), append(gaps, gap)
		rows = append(rows, fmt.Sprintf("%d\t%s -> %s\t%s\t%s\t%s", i+1, from, to, downtimeMS(wall), downtimeMS(down), downtimeMS(gap)))
	}
	b.StopTimer()
	var out strings.Builder
	w := tabwriter.NewWriter(&out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(&out, "move --%s of a 512 MiB VM (TCG), %d moves:\n", mode, rounds)
	fmt.Fprintln(w, "#\tmove\twall\tdowntime (engine)\tlargest tick gap (guest)")
	for _, r := range rows {
		fmt.Fprintln(w, r)
	}
	fmt.Fprintf(w, "median\t\t%s\t%s\t%s\n", downtimeMS(moveMedian(walls)), downtimeMS(moveMedian(downs)), downtimeMS(moveMedian(gaps)))
	w.Flush()
	fmt.Fprint(os.Stdout, out.String())
	b.Log("\n" + out.String())
	b.ReportMetric(float64(moveMedian(downs).Milliseconds()), "downtime-ms")
	b.ReportMetric(float64(moveMedian(walls).Milliseconds()), "move-ms")
}

func downtimeMS(d time.Duration) string { return fmt.Sprintf("%d ms", d.Milliseconds()) }
