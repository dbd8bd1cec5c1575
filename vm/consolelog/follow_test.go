package consolelog

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// drain reads r until it has nothing more, as one poll of a follower.
func drain(t *testing.T, r *Follower, out *strings.Builder) {
	t.Helper()
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		out.Write(buf[:n])
	}
}

// checkInOrder returns the line numbers seen, failing on any out of order.
func checkInOrder(t *testing.T, got string) []int {
	t.Helper()
	var seen []int
	for _, line := range strings.Split(got, "\n") {
		var i int
		if len(line) != len("line 000000000") {
			continue // a line cut by dropped output
		}
		if _, err := fmt.Sscanf(line, "line %d", &i); err != nil {
			continue
		}
		if len(seen) > 0 && i <= seen[len(seen)-1] {
			t.Fatalf("line %d after line %d", i, seen[len(seen)-1])
		}
		seen = append(seen, i)
	}
	return seen
}

// A follower polled less often than the writer rotates still delivers
// everything still in the files, in order, and never stalls: two
// rotations between polls lose nothing; more lose lines (the cap's
// contract) and the follower says so.
func TestFollowerSlowerThanRotation(t *testing.T) {
	for _, tc := range []struct {
		name      string
		perPoll   int // bytes written between polls, in units of half the cap
		wantAll   bool
		wantDrops bool
	}{
		{"one-rotation", 1, true, false},
		{"two-rotations", 2, true, false},
		{"many-rotations", 5, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "console.log")
			const max = 64 << 10
			w, err := NewWriter(path, max)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			r := NewFollower(path)
			defer r.Close()
			var out strings.Builder
			const lineLen = 16
			line := 0
			write := func(bytes int) {
				for end := line + bytes/lineLen; line < end; line++ {
					// Distinct timestamps for the files (coarse clocks).
					if line%(max/2/lineLen) == 0 {
						time.Sleep(10 * time.Millisecond)
					}
					if _, err := fmt.Fprintf(w, "line %09d\n", line); err != nil {
						t.Fatal(err)
					}
				}
			}
			write(100)
			drain(t, r, &out)
			for poll := 0; poll < 4; poll++ {
				write(tc.perPoll*max/2 - lineLen)
				drain(t, r, &out)
			}
			write(10 * lineLen)
			drain(t, r, &out)
			got := out.String()
			seen := checkInOrder(t, got)
			if len(seen) == 0 || seen[len(seen)-1] != line-1 {
				t.Fatalf("the follower stalled: last line %v of %d", seen[len(seen)-1:], line-1)
			}
			if tc.wantAll && len(seen) != line {
				t.Fatalf("follower showed %d of %d lines", len(seen), line)
			}
			if !tc.wantAll && len(seen) == line {
				t.Fatalf("follower showed all %d lines: want a gap", line)
			}
			if drops := strings.Contains(got, "[minions: console output dropped"); drops != tc.wantDrops {
				t.Fatalf("drop marker shown %v, want %v", drops, tc.wantDrops)
			}
			// Every line still in the files when the follower last read
			// was delivered.
			left, _ := Tail(path, max)
			for _, l := range strings.Split(strings.TrimSpace(string(left)), "\n") {
				if !strings.Contains(got, l+"\n") {
					t.Fatalf("line %q in the files but never followed", l)
				}
			}
		})
	}
}
