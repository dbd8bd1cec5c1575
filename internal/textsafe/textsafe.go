// Package textsafe makes untrusted text safe to show on a terminal.
//
// Strings that come from a guest (agent version, kernel release, hostname,
// addresses, error messages) must not be able to drive the terminal of the
// person looking at them: an OSC 52 sequence writes their clipboard, others
// retitle windows, move the cursor, hide text or, in some terminals, answer
// back. Clean removes all of that and keeps every printable character.
package textsafe

import (
	"strings"
	"unicode/utf8"
)

const (
	esc = 0x1b
	bel = 0x07
	// C1 introducers and the string terminator, as runes (UTF-8 text).
	c1DCS = 0x90
	c1SOS = 0x98
	c1CSI = 0x9b
	c1ST  = 0x9c
	c1OSC = 0x9d
	c1PM  = 0x9e
	c1APC = 0x9f
)

// Clean returns s without terminal control: escape sequences (CSI, OSC
// such as OSC 52, DCS, SOS, PM, APC and two-character ESC sequences) are
// removed whole, with an unterminated string sequence running to the end
// of s; the other C0 and C1 control characters and DEL are removed, except
// tab, newline and carriage return, which become one space each; bidi
// override and isolate characters are removed (they reorder what follows);
// invalid UTF-8 becomes U+FFFD. Printable Unicode is kept as it is. Clean
// is for single-line fields; it is idempotent and safe for concurrent use.
func Clean(s string) string { return clean(s, false) }

// CleanText is Clean for multi-line text (an error message that quotes a
// guest's console): newlines and tabs are kept, a carriage return is
// removed.
func CleanText(s string) string { return clean(s, true) }

func clean(s string, lines bool) string {
	if isPlain(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			b.WriteRune(utf8.RuneError)
			i += max(n, 1)
		case r == esc:
			i = skipEscape(s, i+1)
		case r == c1CSI:
			i = skipCSI(s, i+n)
		case r == c1OSC || r == c1DCS || r == c1SOS || r == c1PM || r == c1APC:
			i = skipString(s, i+n)
		case lines && (r == '\t' || r == '\n'):
			b.WriteRune(r)
			i += n
		case !lines && (r == '\t' || r == '\n' || r == '\r'):
			b.WriteByte(' ')
			i += n
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || isBidiControl(r):
			i += n
		default:
			b.WriteString(s[i : i+n])
			i += n
		}
	}
	return b.String()
}

// Strings cleans each of ss in place and returns it.
func Strings(ss []string) []string {
	for i, s := range ss {
		ss[i] = Clean(s)
	}
	return ss
}

// isPlain reports whether s is printable ASCII only (the common case,
// returned without a copy).
func isPlain(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

func isBidiControl(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) || r == 0x200e || r == 0x200f || r == 0x061c
}

// skipEscape returns the index after the sequence whose ESC is just
// before i.
func skipEscape(s string, i int) int {
	if i >= len(s) {
		return i
	}
	switch s[i] {
	case '[':
		return skipCSI(s, i+1)
	case ']', 'P', 'X', '^', '_':
		return skipString(s, i+1)
	}
	// nF: intermediates 0x20-0x2f, then one final byte 0x30-0x7e.
	for i < len(s) && s[i] >= 0x20 && s[i] <= 0x2f {
		i++
	}
	if i < len(s) && s[i] >= 0x30 && s[i] <= 0x7e {
		i++
	}
	return i
}

// skipCSI skips parameters and intermediates up to and including the final
// byte (0x40-0x7e). A byte that cannot be part of a CSI ends it early.
func skipCSI(s string, i int) int {
	for i < len(s) {
		c := s[i]
		switch {
		case c >= 0x20 && c <= 0x3f:
			i++
		case c >= 0x40 && c <= 0x7e:
			return i + 1
		default:
			return i
		}
	}
	return i
}

// skipString skips a control string (OSC, DCS, SOS, PM, APC) up to and
// including its terminator: BEL, ESC \ or the C1 ST. Unterminated, it runs
// to the end of s.
func skipString(s string, i int) int {
	for i < len(s) {
		switch {
		case s[i] == bel:
			return i + 1
		case s[i] == esc:
			if i+1 < len(s) && s[i+1] == '\\' {
				return i + 2
			}
			return i + 1
		case strings.HasPrefix(s[i:], "\u009c"):
			return i + len("\u009c")
		}
		i++
	}
	return i
}
