package proxy

import (
	"net/http/httptest"
	"testing"
	"time"
)

// admitted finds the session cookie among the app's own cookies, in any
// Cookie line, quoted or not, and nothing else passes for it.
func TestAdmittedReadsCookieLines(t *testing.T) {
	s := signer{key: []byte("k"), now: time.Now}
	p := &Proxy{signer: s}
	rt := Route{VMID: "vm1", Owner: "u1", Gen: 2}
	tok := s.sign(claims{Kind: kindSession, VMID: "vm1", Owner: "u1", Gen: 2, Exp: time.Now().Add(time.Hour).Unix()})
	other := s.sign(claims{Kind: kindSession, VMID: "vm2", Owner: "u1", Gen: 2, Exp: time.Now().Add(time.Hour).Unix()})
	share := s.sign(claims{Kind: kindShare, VMID: "vm1", Owner: "u1", Gen: 2, Exp: time.Now().Add(time.Hour).Unix()})
	for _, tc := range []struct {
		lines []string
		want  bool
	}{
		{[]string{"minions_session=" + tok}, true},
		{[]string{"a=1; minions_session=" + tok + "; b=2"}, true},
		{[]string{"a=1", " b=2;minions_session=" + tok}, true},
		{[]string{`minions_session="` + tok + `"`}, true},
		{[]string{"minions_session=" + other + "; minions_session=" + tok}, true},
		{nil, false},
		{[]string{"a=1; b=2"}, false},
		{[]string{"minions_session2=" + tok}, false},
		{[]string{"xminions_session=" + tok}, false},
		{[]string{"minions_session=" + other}, false},
		{[]string{"minions_session=" + share}, false},
		{[]string{"minions_session=" + tok[:len(tok)-2]}, false},
		{[]string{"minions_session"}, false},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		for _, l := range tc.lines {
			r.Header.Add("Cookie", l)
		}
		if got := p.admitted(r, rt); got != tc.want {
			t.Errorf("Cookie %q: admitted %v, want %v", tc.lines, got, tc.want)
		}
	}
}
