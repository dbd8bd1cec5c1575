package starttrace

import (
	"bytes"
	"regexp"
	"strconv"
	"testing"
	"time"
)

func TestOriginFromValue(t *testing.T) {
	want := time.Unix(1765000000, 123456789)
	if got := Origin(strconv.FormatInt(want.UnixNano(), 10)); !got.Equal(want) {
		t.Fatalf("Origin = %v, want %v", got, want)
	}
}

// The process's own start time: before now, and not long before (this
// test binary started moments ago; ticks are 10 ms).
func TestOriginFromProc(t *testing.T) {
	got := Origin("1")
	now := time.Now()
	if got.After(now) || now.Sub(got) > 10*time.Minute {
		t.Fatalf("process start %v, now %v", got, now)
	}
	if _, err := processStart(); err != nil {
		t.Fatal(err)
	}
}

func TestMark(t *testing.T) {
	on.Store(false)
	t.Cleanup(func() { on.Store(false) })
	var b bytes.Buffer
	Enable("", &b)
	Mark("nothing")
	if b.Len() != 0 || Enabled() {
		t.Fatalf("disabled trace wrote %q", b.String())
	}
	Enable(strconv.FormatInt(time.Now().Add(-5*time.Millisecond).UnixNano(), 10), &b)
	Markf("open: %s", "store")
	line := regexp.MustCompile(`(?m)^trace \+(\d+\.\d)ms cpu \d+\.\dms: open: store$`)
	m := line.FindStringSubmatch(b.String())
	if m == nil {
		t.Fatalf("trace output %q", b.String())
	}
	if ms, _ := strconv.ParseFloat(m[1], 64); ms < 5 {
		t.Fatalf("wall %s ms since an origin 5 ms ago", m[1])
	}
}
