package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// BenchmarkMoveDowntimeLive moves a running 512 MiB VM live between the
// two node hosts of a fresh cluster (n1 -> n2 -> n1 ...), at least three
// times, with a counter running in the guest, and prints a table of each
// move's QEMU downtime, the guest's pause and the whole move, with their
// medians.
//
//	MINIONS_E2E_DEBIAN=0 go test -count=1 -run '^$' -bench MoveDowntimeLive -benchtime 1x -v ./e2e/
func BenchmarkMoveDowntimeLive(b *testing.B) {
	c := newCluster(b)
	c.startJoined(b)
	u := c.addUser(b, "ann")
	if r := c.as(b, u, "", "create", "big", "--memory", "512", "--host", "n1", "--json"); r.code != 0 {
		b.Fatalf("create big --memory 512 --host n1: %s", r)
	}
	b.Cleanup(func() { c.as(b, u, "", "destroy", "big", "--yes") })
	if r := c.as(b, u, "", "exec", "big", "--", "sh", "-c",
		"setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done' </dev/null >/dev/null 2>&1 &"); r.code != 0 {
		b.Fatalf("start the counter: %s", r)
	}
	moves := max(b.N, 3)
	type row struct {
		from, to               string
		downtime, pause, total time.Duration
		command                time.Duration
		ram, disk              int64
	}
	var rows []row
	at := "n1"
	b.ResetTimer()
	for i := 0; i < moves; i++ {
		to := map[string]string{"n1": "n2", "n2": "n1"}[at]
		start := time.Now()
		r := c.as(b, u, "", "move", "big", "--host", to, "--live", "--json")
		took := time.Since(start)
		var res liveMoveJSON
		if r.code != 0 || json.Unmarshal([]byte(r.stdout), &res) != nil || res.Move == nil {
			b.Fatalf("move %d big %s -> %s --live: %s\nn1's agent:\n%s\nn2's agent:\n%s", i+1, at, to, r,
				lastLines(c.n1.agent.log.String(), 30), lastLines(c.n2.agent.log.String(), 30))
		}
		m := res.Move
		rows = append(rows, row{at, to, time.Duration(m.DowntimeMS) * time.Millisecond, time.Duration(m.PauseMS) * time.Millisecond,
			time.Duration(m.TotalMS) * time.Millisecond, took, m.RAMBytes, m.DiskBytes})
		at = to
	}
	b.StopTimer()
	if r := c.as(b, u, "", "exec", "big", "cat", "/tmp/count"); r.code != 0 {
		b.Errorf("the counter after %d moves: %s", moves, r)
	}
	med := func(f func(row) time.Duration) time.Duration {
		var d []time.Duration
		for _, r := range rows {
			d = append(d, f(r))
		}
		slices.Sort(d)
		return d[len(d)/2]
	}
	var sb strings.Builder
	tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MOVE\tFROM\tTO\tQEMU DOWNTIME\tGUEST PAUSE\tWHOLE MOVE\tCOMMAND\tRAM SENT\tDISK MIRRORED")
	for i, r := range rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d MiB\t%d MiB\n", i+1, r.from, r.to, r.downtime, r.pause, r.total.Round(time.Millisecond),
			r.command.Round(time.Millisecond), r.ram>>20, r.disk>>20)
	}
	fmt.Fprintf(tw, "median\t\t\t%s\t%s\t%s\t%s\t\t\n", med(func(r row) time.Duration { return r.downtime }), med(func(r row) time.Duration { return r.pause }),
		med(func(r row) time.Duration { return r.total }).Round(time.Millisecond), med(func(r row) time.Duration { return r.command }).Round(time.Millisecond))
	tw.Flush()
	fmt.Fprintf(os.Stderr, "live moves of a running 512 MiB VM between two netns hosts (QEMU TCG):\n%s", sb.String())
	b.ReportMetric(float64(med(func(r row) time.Duration { return r.downtime }).Milliseconds()), "downtime-ms")
	b.ReportMetric(float64(med(func(r row) time.Duration { return r.pause }).Milliseconds()), "pause-ms")
	b.ReportMetric(float64(med(func(r row) time.Duration { return r.total }).Milliseconds()), "move-ms")
}
