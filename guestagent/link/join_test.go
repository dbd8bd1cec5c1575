package link

import (
	"bytes"
	"encoding/binary"
	"testing"
)

type writes struct {
	bytes.Buffer
	calls [][]byte
}

func (w *writes) Write(p []byte) (int, error) {
	w.calls = append(w.calls, append([]byte(nil), p...))
	return len(p), nil
}
func (w *writes) Close() error { return nil }

func header(typ byte, length uint32) []byte {
	h := make([]byte, yamuxHeaderSize)
	h[1] = typ
	binary.BigEndian.PutUint32(h[8:], length)
	return h
}

func TestFrameJoiner(t *testing.T) {
	w := &writes{}
	j := joinFrames(w)
	// A data frame's header and body become one write.
	j.Write(header(yamuxTypeData, 5))
	if len(w.calls) != 0 {
		t.Fatalf("header written alone: %d writes", len(w.calls))
	}
	if n, err := j.Write([]byte("hello")); n != 5 || err != nil {
		t.Fatalf("body write = %d, %v", n, err)
	}
	if len(w.calls) != 1 || len(w.calls[0]) != yamuxHeaderSize+5 || string(w.calls[0][yamuxHeaderSize:]) != "hello" {
		t.Fatalf("writes = %q", w.calls)
	}
	// Frames without a body go out at once: window updates, pings, and
	// data frames that only carry flags.
	j.Write(header(1, 262144))
	j.Write(header(2, 7))
	j.Write(header(yamuxTypeData, 0))
	if len(w.calls) != 4 {
		t.Fatalf("bodiless frames held back: %d writes", len(w.calls))
	}
}
