package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// accessRecord is one line of the access log: a proxied request.
type accessRecord struct {
	component, remoteIP, host, vmID, method, path string
	status                                        int
	bytes, durationUS                             int64
	proto                                         string
}

// addTo adds the record's attributes to r, in the log's order.
func (f *accessRecord) addTo(r *slog.Record) {
	r.AddAttrs(slog.String("component", f.component),
		slog.String("remote_ip", f.remoteIP),
		slog.String("host", f.host),
		slog.String("vm_id", f.vmID),
		slog.String("method", f.method),
		slog.String("path", f.path),
		slog.Int("status", f.status),
		slog.Int64("bytes", f.bytes),
		slog.Int64("duration_us", f.durationUS),
		slog.String("proto", f.proto),
	)
}

// NewJSONAccessLog returns a logger that writes what
// slog.New(slog.NewJSONHandler(w, nil)).With(attrs) writes, byte for
// byte, and writes the proxy's per-request record itself: slog's JSON
// handler took about 2 µs a record here (a Record with ten attributes,
// its attribute slice grown, a Value switch and a pooled buffer per
// attribute), a few percent of a proxied request's CPU. w must take
// concurrent whole-record writes (a LogBuffer does); every record is one
// Write.
func NewJSONAccessLog(w io.Writer, attrs ...slog.Attr) *slog.Logger {
	inner := slog.NewJSONHandler(w, nil).WithAttrs(attrs)
	h := &jsonAccess{Handler: inner, w: w}
	// The handler's own attributes as slog writes them: the part of a
	// bare record's line between its message and its end.
	var b bytes.Buffer
	if err := slog.NewJSONHandler(&b, nil).WithAttrs(attrs).Handle(context.Background(),
		slog.NewRecord(time.Time{}, slog.LevelInfo, "m", 0)); err == nil {
		line := b.Bytes()
		const head = `{"level":"INFO","msg":"m"`
		if bytes.HasPrefix(line, []byte(head)) && bytes.HasSuffix(line, []byte("}\n")) {
			h.attrs = append([]byte(nil), line[len(head):len(line)-2]...)
			h.ok = true
		}
	}
	h.pool.New = func() any { b := make([]byte, 0, 512); return &b }
	return slog.New(h)
}

// jsonAccess is NewJSONAccessLog's handler: slog's JSON handler for
// everything, and request for the proxy's record. Handlers derived from
// it (WithAttrs, WithGroup) are slog's.
type jsonAccess struct {
	slog.Handler
	w     io.Writer
	attrs []byte // the handler's attributes, encoded: `,"component":"access"`
	ok    bool   // attrs is known: request may write
	pool  sync.Pool
}

// fast reports whether request writes the record itself.
func (h *jsonAccess) fast() bool { return h.ok }

// request writes f as slog's JSON handler would write the record of
// serveHTTP (time t, level INFO, message "request", f's attributes).
func (h *jsonAccess) request(t time.Time, f accessRecord) {
	if y := t.Year(); !h.ok || y < 0 || y >= 10000 {
		rec := slog.NewRecord(t, slog.LevelInfo, "request", 0)
		f.addTo(&rec)
		_ = h.Handler.Handle(context.Background(), rec)
		return
	}
	bp := h.pool.Get().(*[]byte)
	b := append((*bp)[:0], `{"time":"`...)
	b = t.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","level":"INFO","msg":"request"`...)
	b = append(b, h.attrs...)
	b = appendJSONField(b, "component", f.component)
	b = appendJSONField(b, "remote_ip", f.remoteIP)
	b = appendJSONField(b, "host", f.host)
	b = appendJSONField(b, "vm_id", f.vmID)
	b = appendJSONField(b, "method", f.method)
	b = appendJSONField(b, "path", f.path)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(f.status), 10)
	b = append(b, `,"bytes":`...)
	b = strconv.AppendInt(b, f.bytes, 10)
	b = append(b, `,"duration_us":`...)
	b = strconv.AppendInt(b, f.durationUS, 10)
	b = appendJSONField(b, "proto", f.proto)
	b = append(b, "}\n"...)
	_, _ = h.w.Write(b)
	if cap(b) <= 4<<10 {
		*bp = b
		h.pool.Put(bp)
	}
}

// appendJSONField appends `,"key":"value"`; key needs no escaping.
func appendJSONField(b []byte, key, v string) []byte {
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':', '"')
	b = appendJSONString(b, v)
	return append(b, '"')
}

// appendJSONString appends s escaped as slog's JSON handler escapes
// strings: '"' and '\' with a backslash; \n, \r and \t by name; other
// bytes below 0x20 as \u00XX; U+2028 and U+2029 as \u2028 and \u2029;
// each byte that is not part of valid UTF-8 as \ufffd; everything else
// (HTML characters included) as it is.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(b, s[start:]...)
}
