package e2e

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// BenchmarkImageCreate is issue 7's table: for the minimal and the Debian
// image (default size: 1 vCPU; Debian with 1 GiB), `minions create` (exec
// to exit: the agent answered) and, for
// Debian, create to the guest's own sshd accepting the injected key (an SSH
// login running `true` from the host). One iteration creates one VM of
// each image; VMs are destroyed untimed. Needs the Debian image
// (MINIONS_E2E_DEBIAN not 0).
//
//	go test -run '^$' -bench ImageCreate -benchtime 5x -timeout 40m ./e2e/
func BenchmarkImageCreate(b *testing.B) {
	benchSetup(b)
	if os.Getenv("MINIONS_E2E_DEBIAN") == "0" {
		b.Skip("MINIONS_E2E_DEBIAN=0: no Debian image")
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		b.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		b.Fatal(err)
	}
	keyFile := filepath.Join(b.TempDir(), "id.pub")
	if err := os.WriteFile(keyFile, ssh.MarshalAuthorizedKey(sshPub), 0o644); err != nil {
		b.Fatal(err)
	}
	var minimal, debian, debianSSH samples
	i := 0
	for b.Loop() {
		name := fmt.Sprintf("bench-img-min-%d", i)
		c := timedCreate(b, name, "--os", "minimal")
		b.StopTimer()
		minimal = append(minimal, c.took)
		destroyVM(b, name)
		b.StartTimer()

		name = fmt.Sprintf("bench-img-deb-%d", i)
		start := time.Now()
		c = timedCreate(b, name, "--os", "debian", "--memory", "1024", "--ssh-key", keyFile)
		debian = append(debian, c.took)
		if err := waitSSHLogin(c.vm.IP, signer, 3*time.Minute); err != nil {
			b.Fatalf("debian sshd: %v", err)
		}
		debianSSH = append(debianSSH, time.Since(start))
		b.StopTimer()
		destroyVM(b, name)
		b.StartTimer()
		i++
	}
	debian.report(b, "debian-agent")
	debianSSH.report(b, "debian-sshd")
	minimal.report(b, "minimal-agent")
	t := &table{title: "BenchmarkImageCreate (1 vCPU): create -> agent ready (minions create exits) and -> the guest's sshd accepting the injected key", head: sampleHead("image, milestone")}
	t.addSamples("minimal: create -> agent ready", minimal)
	t.addSamples("debian:  create -> agent ready", debian)
	t.addSamples("debian:  create -> sshd login", debianSSH)
	t.print()
}

// waitSSHLogin retries an SSH login as root to ip:22 with signer, running
// `true`, until it succeeds or d passes.
func waitSSHLogin(ip string, signer ssh.Signer, d time.Duration) error {
	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second}
	deadline := time.Now().Add(d)
	for {
		err := func() error {
			c, err := ssh.Dial("tcp", net.JoinHostPort(ip, "22"), cfg)
			if err != nil {
				return err
			}
			defer c.Close()
			s, err := c.NewSession()
			if err != nil {
				return err
			}
			defer s.Close()
			return s.Run("true")
		}()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
