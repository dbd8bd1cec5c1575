package network

import "testing"

func TestPersistUnit(t *testing.T) {
	golden(t, "minions-network.service", PersistUnit("/usr/local/bin/minions"))
	tests := []struct{ exe, want string }{
		{"/usr/bin/minions", "ExecStart=/usr/bin/minions init\n"},
		{"/opt/my tools/minions", "ExecStart=\"/opt/my tools/minions\" init\n"},
		{"/opt/100%/minions", "ExecStart=\"/opt/100%%/minions\" init\n"},
	}
	for _, tt := range tests {
		if got := PersistUnit(tt.exe); !contains(got, tt.want) {
			t.Errorf("PersistUnit(%q) lacks %q:\n%s", tt.exe, tt.want, got)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
