package api

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/vm"
)

// FuzzDecode feeds arbitrary bodies to the strict request decoder for every
// request type: it never panics, rejects with InvalidArgument only, and
// what it accepts encodes the same after a round trip.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{"name":"web","cpus":2}`, `{"name":"x","extra":1}`, `{} {}`, ``, `null`, `{"argv":["a"],"env":{"A":"b"}}`,
		`{"max_vms":1}`, `{"public_key":"ssh-ed25519 AAAA"}`, `{"expires_in_seconds":-1}`, `[1,2]`, `{"name":"\u0000"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, newV := range []func() any{
			func() any { return &service.CreateRequest{} }, func() any { return &service.ResizeRequest{} },
			func() any { return &service.CopyRequest{} }, func() any { return &service.SnapshotRequest{} }, func() any { return &service.ForkRequest{} },
			func() any { return &service.Quota{} }, func() any { return &RenameRequest{} }, func() any { return &SSHKeyRequest{} },
			func() any { return &UserRequest{} }, func() any { return &TokenRequest{} }, func() any { return &ExecSpec{} },
		} {
			v := newV()
			err := decodeBytes(b, v)
			if err != nil {
				if !errorsIsInvalid(err) {
					t.Fatalf("%T: error of class %q: %v", v, errs.Code(err), err)
				}
				continue
			}
			again, _ := json.Marshal(v)
			w := newV()
			if err := decodeBytes(again, w); err != nil {
				t.Fatalf("%T: re-encoded %s does not decode: %v", v, again, err)
			}
			// Compared as encoded: an empty list and no list mean the
			// same (omitempty) and need not survive as such.
			if twice, _ := json.Marshal(w); !bytes.Equal(again, twice) {
				t.Fatalf("%T: round trip changed %s to %s", v, again, twice)
			}
		}
	})
}

func errorsIsInvalid(err error) bool { return errs.Code(err) == "invalid_argument" }

// FuzzValidName checks vm.ValidName against its documented rule: 1-40
// lowercase letters, digits and hyphens, starting with a letter and not
// ending with a hyphen, and not 12 hex digits (that reads as an ID);
// rejections are InvalidArgument.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"web", "a", "web-1", "-web", "web-", "Web", "1web", "a--b", "", "ab\n", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		want := len(name) >= 1 && len(name) <= 40 && name[0] >= 'a' && name[0] <= 'z' && name[len(name)-1] != '-'
		for i := 0; i < len(name) && want; i++ {
			c := name[i]
			want = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'
		}
		if want && len(name) == 12 && strings.Trim(name, "0123456789abcdef") == "" {
			want = false // reads as an ID
		}
		err := vm.ValidName("vm", name)
		if (err == nil) != want {
			t.Fatalf("ValidName(%q) = %v, want valid=%v", name, err, want)
		}
		if err != nil && !errorsIsInvalid(err) {
			t.Fatalf("ValidName(%q): class %q", name, errs.Code(err))
		}
		if err == nil && bytes.ContainsAny([]byte(name), "/. \x00") {
			t.Fatalf("ValidName accepted %q, unsafe in paths", name)
		}
	})
}
