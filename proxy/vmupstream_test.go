package proxy

import "testing"

func TestParseVMUpstream(t *testing.T) {
	for _, tc := range []struct {
		addr string
		id   string
		port int
		ok   bool
	}{
		{VMUpstreamHost("abc123") + ":8080", "abc123", 8080, true},
		{"10.0.0.2:8080", "", 0, false},
		{".vm.minions.invalid:80", "", 0, false},
		{VMUpstreamHost("abc") + ":0", "", 0, false},
		{VMUpstreamHost("abc") + ":x", "", 0, false},
		{VMUpstreamHost("abc"), "", 0, false},
	} {
		id, port, ok := ParseVMUpstream(tc.addr)
		if id != tc.id || port != tc.port || ok != tc.ok {
			t.Errorf("ParseVMUpstream(%q) = %q %d %v", tc.addr, id, port, ok)
		}
	}
}
