package units

import (
	"math"
	"testing"
)

func TestBytes(t *testing.T) {
	for _, tc := range []struct {
		n    int64
		want string
	}{
		{-1, "-"},
		{0, "0B"},
		{1023, "1023B"},
		{1024, "1.0KiB"},
		{1536, "1.5KiB"},
		{12 << 20, "12.0MiB"},
		{1<<30 - 1, "1024.0MiB"},
		{3<<30 + 200<<20, "3.2GiB"},
		{5 << 40, "5.0TiB"},
		{math.MaxInt64, "8.0EiB"},
	} {
		if got := Bytes(tc.n); got != tc.want {
			t.Errorf("Bytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
	if got := Bytes(uint64(math.MaxUint64)); got != "16.0EiB" {
		t.Errorf("Bytes(MaxUint64) = %q", got)
	}
	if got := Bytes(2048); got != "2.0KiB" {
		t.Errorf("Bytes(int 2048) = %q", got)
	}
}
