package iocount

import (
	"bytes"
	"io"
	"strings"
	"sync/atomic"
	"testing"
)

func TestCounts(t *testing.T) {
	var r, w atomic.Int64
	var out bytes.Buffer
	n, err := io.Copy(Writer{W: &out, N: &w}, Reader{R: strings.NewReader("hello, world"), N: &r})
	if err != nil || n != 12 || r.Load() != 12 || w.Load() != 12 || out.String() != "hello, world" {
		t.Fatalf("copied %d (%v): read %d, wrote %d, %q", n, err, r.Load(), w.Load(), out.String())
	}
}
