package service

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/minionsdev/minions/vm/engine"
)

// TestMeterCountsAndSays: the meter passes the stream through unchanged,
// counts every byte, finds the disk's size in the header and says
// "transfer N/M MiB, R MiB/s".
func TestMeterCountsAndSays(t *testing.T) {
	disk := bytes.Repeat([]byte{7}, 3<<20)
	var stream bytes.Buffer
	if err := engine.WriteDiskStream(&stream, engine.DiskHeader{ID: "vm_0123456789abcdef", Size: int64(len(disk))}, bytes.NewReader(disk)); err != nil {
		t.Fatal(err)
	}
	want := stream.Bytes()
	var lines []string
	m := newMeter(bytes.NewReader(want), func(s string) { lines = append(lines, s) })
	m.said = time.Now().Add(-time.Hour) // say at the first read
	got, err := io.ReadAll(m)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, %v; want the %d of the stream", len(got), err, len(want))
	}
	m.done()
	st := m.stats()
	if st.Bytes != int64(len(want)) || st.Seconds < 0 {
		t.Errorf("stats %+v, want %d bytes", st, len(want))
	}
	if len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], "transfer 3/3 MiB, ") || !strings.HasSuffix(lines[len(lines)-1], " MiB/s") {
		t.Errorf("progress lines %q", lines)
	}
}
