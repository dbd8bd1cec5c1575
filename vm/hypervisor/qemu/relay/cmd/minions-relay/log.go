package main

import (
	"fmt"
	"io"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// textLog is the relay's log: one line per record in log/slog's text
// format (time=... level=... msg=... key=value ...), written to w. It is
// not log/slog because every package a relay links is paid for in each
// VM's host memory (TestImportsLean). Safe for concurrent use.
type textLog struct {
	mu    sync.Mutex
	w     io.Writer
	attrs []any // prepended to every record's pairs
	buf   []byte
	debug bool // whether Debug records are written
}

func (l *textLog) Debug(msg string, args ...any) {
	if l.debug {
		l.log("DEBUG", msg, args)
	}
}
func (l *textLog) Info(msg string, args ...any) { l.log("INFO", msg, args) }
func (l *textLog) Warn(msg string, args ...any) { l.log("WARN", msg, args) }

func (l *textLog) log(level, msg string, args []any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := append(l.buf[:0], "time="...)
	b = time.Now().AppendFormat(b, time.RFC3339Nano)
	b = append(b, " level="...)
	b = append(b, level...)
	b = append(b, " msg="...)
	b = appendValue(b, msg)
	b = appendPairs(b, l.attrs)
	b = appendPairs(b, args)
	b = append(b, '\n')
	l.w.Write(b)
	if cap(b) <= 1<<10 {
		l.buf = b // keep a small buffer for the next record
	}
}

// appendPairs appends key=value pairs; a key without a value is logged
// under !BADKEY, as log/slog does.
func appendPairs(b []byte, kv []any) []byte {
	for i := 0; i < len(kv); i += 2 {
		key, ok := kv[i].(string)
		if !ok || i+1 == len(kv) {
			b = append(b, " !BADKEY="...)
			b = appendValue(b, kv[i])
			i--
			continue
		}
		b = append(b, ' ')
		b = append(b, key...)
		b = append(b, '=')
		b = appendValue(b, kv[i+1])
	}
	return b
}

func appendValue(b []byte, v any) []byte {
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case error:
		if v == nil {
			s = "<nil>"
		} else {
			s = v.Error()
		}
	case int:
		return strconv.AppendInt(b, int64(v), 10)
	case int64:
		return strconv.AppendInt(b, v, 10)
	case uint32:
		return strconv.AppendUint(b, uint64(v), 10)
	case bool:
		return strconv.AppendBool(b, v)
	case time.Duration:
		s = v.String()
	default:
		s = fmt.Sprint(v)
	}
	if needsQuote(s) {
		return strconv.AppendQuote(b, s)
	}
	return append(b, s...)
}

// needsQuote reports whether s must be quoted to stay one token: empty,
// or with a space, '=', '"', a control character or invalid UTF-8.
func needsQuote(s string) bool {
	if s == "" {
		return true
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c <= ' ' || c == '=' || c == '"' || c == 0x7f {
				return true
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError || !strconv.IsPrint(r) {
			return true
		}
		i += n
	}
	return false
}
