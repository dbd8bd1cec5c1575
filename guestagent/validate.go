package guestagent

// Hand-written checks instead of regular expressions: a guest restored
// from a template compiles nothing on its re-identification's critical
// path (under TCG every code path run for the first time after a restore
// is translated first).

// validHostname reports whether s is a single DNS label: 1 to 63 ASCII
// letters, digits and hyphens, not starting or ending with a hyphen.
func validHostname(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validMachineID reports whether s is a machine-id: 32 lowercase hex
// digits.
func validMachineID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
