package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"testing"
)

// TestWriteStatusLine: every status line is net/http's, for the codes
// with a text and without, and writing one allocates nothing.
func TestWriteStatusLine(t *testing.T) {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	for code := 100; code <= 999; code++ {
		out.Reset()
		writeStatusLine(bw, true, code)
		bw.Flush()
		want := fmt.Sprintf("HTTP/1.1 %03d status code %d\r\n", code, code)
		if text := http.StatusText(code); text != "" {
			want = fmt.Sprintf("HTTP/1.1 %d %s\r\n", code, text)
		}
		if out.String() != want {
			t.Fatalf("code %d: %q, want %q", code, out.String(), want)
		}
	}
	bw = bufio.NewWriterSize(&out, 4<<10)
	if n := testing.AllocsPerRun(100, func() { writeStatusLine(bw, true, 200); bw.Reset(&out) }); n != 0 {
		t.Errorf("writeStatusLine allocates %.0f times, want 0", n)
	}
}

// TestNormalizeHostWithoutPortAllocatesNothing: a Host without a port
// (what browsers send on default ports) is normalized as before, without
// SplitHostPort's error.
func TestNormalizeHostWithoutPortAllocatesNothing(t *testing.T) {
	for in, want := range map[string]string{"web.localhost": "web.localhost", "Web.Example.COM.": "web.example.com",
		"web.localhost:8080": "web.localhost", "[::1]:80": "::1", "[::1]": "[::1]", "a:b:c": "a:b:c"} {
		if got := normalizeHost(in); got != want {
			t.Errorf("normalizeHost(%q) = %q, want %q", in, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = normalizeHost("web.localhost") }); n != 0 {
		t.Errorf("normalizeHost allocates %.0f times, want 0", n)
	}
}
