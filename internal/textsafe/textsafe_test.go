package textsafe

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClean(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "6.1.0-31-cloud-amd64", "6.1.0-31-cloud-amd64"},
		{"unicode kept", "höst-名前 ✓ 👩‍💻", "höst-名前 ✓ 👩‍💻"},
		{"osc 52 bel", "\x1b]52;c;ZXZpbA==\x07host", "host"},
		{"osc 52 st", "\x1b]52;c;ZXZpbA==\x1b\\host", "host"},
		{"osc 52 c1", "\u009d52;c;ZXZpbA==\u009chost", "host"},
		{"osc title unterminated", "a\x1b]0;pwned", "a"},
		{"csi colour", "\x1b[31mred\x1b[0m", "red"},
		{"csi c1", "\u009b2Jx", "x"},
		{"csi private", "\x1b[?1049hx", "x"},
		{"dcs", "a\x1bPq#0;2;0;0;0\x1b\\b", "ab"},
		{"apc", "a\x1b_Gf=100;AAAA\x1b\\b", "ab"},
		{"two-char esc", "a\x1bcb\x1b(Bc", "abc"},
		{"lone esc at end", "a\x1b", "a"},
		{"c0 and del", "a\x00b\x08c\x7fd\x07e", "abcde"},
		{"whitespace", "a\tb\nc\rd", "a b c d"},
		{"c1 controls", "a\u0085b\u008ec", "abc"},
		{"bidi", "abc\u202edcba\u2066x\u2069", "abcdcbax"},
		{"invalid utf-8", "a\xffb", "a\ufffdb"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Clean(tt.in)
			if got != tt.want {
				t.Fatalf("Clean(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if again := Clean(got); again != got {
				t.Fatalf("not idempotent: %q -> %q", got, again)
			}
		})
	}
}

func TestCleanText(t *testing.T) {
	in := "vm web did not start:\n\tkernel: \x1b]52;c;ZXZpbA==\x07panic\r\n\x1b[2Jdone"
	want := "vm web did not start:\n\tkernel: panic\ndone"
	if got := CleanText(in); got != want {
		t.Fatalf("CleanText = %q, want %q", got, want)
	}
}

func FuzzClean(f *testing.F) {
	for _, s := range []string{"\x1b]52;c;ZXZpbA==\x07host", "\x1b[31mx", "\u009b1m", "a\tb", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := Clean(s)
		if !utf8.ValidString(got) {
			t.Fatalf("invalid UTF-8 out of %q", s)
		}
		for _, r := range got {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || isBidiControl(r) {
				t.Fatalf("Clean(%q) = %q keeps control %U", s, got, r)
			}
		}
		if strings.ContainsRune(got, 0x1b) {
			t.Fatalf("ESC left in %q", got)
		}
	})
}
