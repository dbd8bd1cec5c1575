package guestagent

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
)

func TestEnsureHostKeys(t *testing.T) {
	dir := t.TempDir()
	// No OpenSSH (no sshd_config): nothing is made.
	if made, err := EnsureHostKeys(dir); err != nil || len(made) != 0 {
		t.Fatalf("without sshd_config: %v, %v", made, err)
	}
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte("Port 22\n"), 0o644)
	made, err := EnsureHostKeys(dir)
	if err != nil || len(made) != 2 {
		t.Fatalf("made %v, %v", made, err)
	}
	for _, tc := range []struct{ typ, alg string }{{"ed25519", ssh.KeyAlgoED25519}, {"ecdsa", ssh.KeyAlgoECDSA256}} {
		p := filepath.Join(dir, "ssh_host_"+tc.typ+"_key")
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
			t.Errorf("%s: not in OpenSSH format: %.40q", p, b)
		}
		signer, err := ssh.ParsePrivateKey(b)
		if err != nil || signer.PublicKey().Type() != tc.alg {
			t.Fatalf("%s: %v, %v", p, signer, err)
		}
		if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", p, st.Mode())
		}
		pub, err := os.ReadFile(p + ".pub")
		if err != nil {
			t.Fatal(err)
		}
		parsed, _, _, _, err := ssh.ParseAuthorizedKey(pub)
		if err != nil || !bytes.Equal(parsed.Marshal(), signer.PublicKey().Marshal()) {
			t.Errorf("%s.pub does not match the private key: %v", p, err)
		}
	}
	// Present keys are kept; a missing one is made again.
	before, _ := os.ReadFile(filepath.Join(dir, "ssh_host_ed25519_key"))
	os.Remove(filepath.Join(dir, "ssh_host_ecdsa_key"))
	made, err = EnsureHostKeys(dir)
	if err != nil || len(made) != 1 || filepath.Base(made[0]) != "ssh_host_ecdsa_key" {
		t.Fatalf("second run made %v, %v", made, err)
	}
	if after, _ := os.ReadFile(filepath.Join(dir, "ssh_host_ed25519_key")); !bytes.Equal(before, after) {
		t.Error("an existing host key was replaced")
	}
}

func TestSeedMachineID(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	p := filepath.Join(root, "etc/machine-id")
	os.WriteFile(p, nil, 0o444) // as images ship it: empty
	if err := seedMachineID(root, "0123456789ab"); err != nil {
		t.Fatal(err)
	}
	want := MachineIDFor("0123456789ab") + "\n"
	if b, _ := os.ReadFile(p); string(b) != want || len(want) != 33 {
		t.Fatalf("machine-id %q, want %q", b, want)
	}
	// One already there is kept.
	if err := seedMachineID(root, "ffffffffffff"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != want {
		t.Fatalf("machine-id replaced: %q", b)
	}
}
