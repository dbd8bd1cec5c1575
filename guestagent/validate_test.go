package guestagent

import (
	"regexp"
	"strings"
	"testing"
)

// TestValidHostnameAndMachineID checks the hand-written validators against
// the regular expressions they replace (a restored guest compiled those
// under TCG on its first re-identification) on a table and on every
// string of up to two characters from an alphabet around their edges.
func TestValidHostnameAndMachineID(t *testing.T) {
	hostRE := regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)
	midRE := regexp.MustCompile(`^[0-9a-f]{32}$`)
	cases := []string{"", "a", "A", "0", "-", "a-", "-a", "a-b", "web-1", "Web1", "a.b", "a_b", "ä", "a b", "a\n",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "a" + strings.Repeat("-", 61) + "a", "a" + strings.Repeat("-", 62) + "a",
		"0123456789abcdef0123456789abcdef", "0123456789ABCDEF0123456789abcdef", "0123456789abcdef0123456789abcde",
		"0123456789abcdef0123456789abcdef0", "0123456789abcdeg0123456789abcdef", "0123456789abcdef0123456789abcde\n"}
	alphabet := []string{"a", "Z", "0", "9", "f", "g", "-", ".", "/", ":", "@", "[", "`", "{", "\x00", "é"}
	for _, x := range alphabet {
		cases = append(cases, x)
		for _, y := range alphabet {
			cases = append(cases, x+y, x+y+x)
		}
	}
	for _, c := range cases {
		if got, want := validHostname(c), hostRE.MatchString(c); got != want {
			t.Errorf("validHostname(%q) = %v, want %v", c, got, want)
		}
		if got, want := validMachineID(c), midRE.MatchString(c); got != want {
			t.Errorf("validMachineID(%q) = %v, want %v", c, got, want)
		}
	}
}
