package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// slogLine is what slog.NewJSONHandler(w, nil).With(attrs) writes for the
// proxy's access record of f.
func slogLine(t testing.TB, attrs []slog.Attr, at time.Time, f accessRecord) string {
	var b bytes.Buffer
	h := slog.NewJSONHandler(&b, nil).WithAttrs(attrs)
	rec := slog.NewRecord(at, slog.LevelInfo, "request", 0)
	f.addTo(&rec)
	if err := h.Handle(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func fastLine(t testing.TB, attrs []slog.Attr, at time.Time, f accessRecord) string {
	var b bytes.Buffer
	l := NewJSONAccessLog(&b, attrs...)
	h, ok := l.Handler().(*jsonAccess)
	if !ok || !h.fast() {
		t.Fatalf("NewJSONAccessLog gave %T without its fast path", l.Handler())
	}
	h.request(at, f)
	return b.String()
}

// The access log's own JSON writer writes exactly the line slog's JSON
// handler writes for the same record, whatever the strings hold (quotes,
// control characters, HTML, U+2028, bytes that are not UTF-8).
func TestJSONAccessLogMatchesSlog(t *testing.T) {
	attrs := []slog.Attr{slog.String("component", "access")}
	at := time.Date(2026, 12, 6, 9, 15, 1, 123456789, time.UTC)
	tricky := []string{"", "plain", `q"uote`, `back\slash`, "ctl\x00\x01\x1f\x7f", "nl\n\r\t", "<script>&amp;</script>",
		"line\u2028sep\u2029", "bad\xff\xfeutf8", "é日本語🙂", "\xe2\x80", "/p?a=1&b=<2>"}
	base := accessRecord{component: "proxy", remoteIP: "127.0.0.1", host: "web.localhost", vmID: "vm1", method: "GET",
		path: "/", status: 200, bytes: 12, durationUS: 345, proto: "HTTP/1.1"}
	check := func(f accessRecord, at time.Time, attrs []slog.Attr) {
		t.Helper()
		if want, got := slogLine(t, attrs, at, f), fastLine(t, attrs, at, f); got != want {
			t.Fatalf("record %+v:\n got %q\nwant %q", f, got, want)
		}
	}
	for _, s := range tricky {
		f := base
		f.host, f.path, f.vmID, f.remoteIP, f.method, f.proto = s, s, s, s, s, s
		check(f, at, attrs)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := make([]byte, r.IntN(40))
		for i := range b {
			b[i] = byte(r.IntN(256))
		}
		f := base
		f.path, f.host = string(b), string(b[:len(b)/2])
		f.status, f.bytes, f.durationUS = r.IntN(600), r.Int64N(1<<40)-1<<20, -r.Int64N(1000)
		check(f, at.Add(time.Duration(r.Int64N(int64(time.Hour)))), attrs)
	}
	// Other handler attributes, a local zone, no attributes at all.
	loc := time.FixedZone("x", -(3*3600 + 1800))
	check(base, at.In(loc), []slog.Attr{slog.String("component", "access"), slog.Int("n", 3), slog.Bool("b", true)})
	check(base, at, nil)
	check(base, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), attrs)
}

// Records other than the proxy's, and loggers derived with With or
// WithGroup, are slog's JSON handler's, unchanged.
func TestJSONAccessLogOtherRecords(t *testing.T) {
	var got, want bytes.Buffer
	l := NewJSONAccessLog(&got, slog.String("component", "access"))
	s := slog.New(slog.NewJSONHandler(&want, nil)).With("component", "access")
	for _, lg := range []*slog.Logger{l, s} {
		lg.Warn("other", "k", "v<>", "n", 3)
		lg.With("x", 1).Info("with")
		lg.WithGroup("g").Info("grouped", "a", "b")
		lg.Debug("not enabled")
	}
	clean := func(s string) string { // the times differ
		var out []string
		for _, line := range strings.Split(s, "\n") {
			if i := strings.Index(line, `"level"`); i >= 0 {
				line = line[i:]
			}
			out = append(out, line)
		}
		return strings.Join(out, "\n")
	}
	if clean(got.String()) != clean(want.String()) {
		t.Fatalf("got\n%s\nwant\n%s", got.String(), want.String())
	}
}

// BenchmarkAccessLog is one access record through slog's JSON handler
// and through the access log's own writer.
func BenchmarkAccessLog(b *testing.B) {
	f := accessRecord{component: "proxy", remoteIP: "127.0.0.1", host: "pbench.localhost", vmID: "vm-0123456789abcdef",
		method: "GET", path: "/", status: 200, bytes: 12, durationUS: 1234, proto: "HTTP/1.1"}
	b.Run("slog", func(b *testing.B) {
		h := slog.NewJSONHandler(io.Discard, nil).WithAttrs([]slog.Attr{slog.String("component", "access")})
		b.ReportAllocs()
		for range b.N {
			rec := slog.NewRecord(time.Now(), slog.LevelInfo, "request", 0)
			f.addTo(&rec)
			_ = h.Handle(context.Background(), rec)
		}
	})
	b.Run("own", func(b *testing.B) {
		h := NewJSONAccessLog(io.Discard, slog.String("component", "access")).Handler().(*jsonAccess)
		b.ReportAllocs()
		for range b.N {
			h.request(time.Now(), f)
		}
	})
}
