// Command agentlist is a tiny `ssh-add -l` for images without OpenSSH: it
// lists the keys of the agent at $SSH_AUTH_SOCK by SHA256 fingerprint and
// proves each usable by having it sign a challenge. The e2e tests copy it
// into a VM (built with CGO_ENABLED=0).
package main

import (
	"crypto/rand"
	"fmt"
	"net"
	"os"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

func main() {
	sock := os.Getenv("SSH_AUTH_SOCK")
	if sock == "" {
		fmt.Fprintln(os.Stderr, "agentlist: SSH_AUTH_SOCK is not set")
		os.Exit(2)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agentlist:", err)
		os.Exit(2)
	}
	defer c.Close()
	a := agent.NewClient(c)
	keys, err := a.List()
	if err != nil {
		fmt.Fprintln(os.Stderr, "agentlist: list:", err)
		os.Exit(1)
	}
	if len(keys) == 0 {
		fmt.Fprintln(os.Stderr, "agentlist: the agent has no identities")
		os.Exit(1)
	}
	challenge := make([]byte, 32)
	rand.Read(challenge)
	for _, k := range keys {
		sig, err := a.Sign(k, challenge)
		if err == nil {
			err = k.Verify(challenge, sig)
		}
		status := "signed"
		if err != nil {
			status = "sign failed: " + err.Error()
		}
		fmt.Printf("%s %s %s\n", ssh.FingerprintSHA256(k), k.Comment, status)
	}
}
