package vsockcli

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/internal/errs"
)

// The client's other channels: sftp and direct-tcpip (a forward).

func TestSFTP(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	name := filepath.Join(e.root, "root", "blob.bin")
	if err := c.WriteFile(ctx, name, data, 0o640); err != nil {
		t.Fatal(err)
	}
	onDisk, err := os.ReadFile(name)
	if err != nil || !bytes.Equal(onDisk, data) {
		t.Fatalf("file on disk differs (%v)", err)
	}
	if st, _ := os.Stat(name); st.Mode().Perm() != 0o640 {
		t.Fatalf("mode %v", st.Mode())
	}
	got, err := c.ReadFile(ctx, name)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back differs (%v)", err)
	}
	if _, err := c.ReadFile(ctx, filepath.Join(e.root, "missing")); !errors.Is(err, errs.NotFound) {
		t.Fatalf("missing file: %v", err)
	}
	s, err := c.SFTP()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if wd, err := s.Getwd(); err != nil || wd != filepath.Join(e.root, "root") {
		t.Fatalf("sftp working directory %q, %v", wd, err)
	}

	// The subsystem ends with exit-status 0 once the client is done (scp
	// and sftp exit 1 without it).
	ch, reqs, err := c.SSH().OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	ok, err := ch.SendRequest("subsystem", true, ssh.Marshal(&struct{ Name string }{"sftp"}))
	if err != nil || !ok {
		t.Fatalf("subsystem request: %v %v", ok, err)
	}
	sc, err := sftp.NewClientPipe(ch, halfCloser{ch})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Stat(name); err != nil {
		t.Fatal(err)
	}
	sc.Close()
	select {
	case req, ok := <-reqs:
		var st struct{ Status uint32 }
		if !ok || req.Type != "exit-status" || ssh.Unmarshal(req.Payload, &st) != nil || st.Status != 0 {
			t.Fatalf("after the sftp client closed: %v %+v", ok, req)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no exit-status after the sftp client closed")
	}
}

// halfCloser turns Close into CloseWrite, as an sftp client over stdin
// does.
type halfCloser struct{ ssh.Channel }

func (h halfCloser) Close() error { return h.CloseWrite() }

func TestDirectTCPIP(t *testing.T) {
	ctx := testCtx(t)
	e := newEnv(t, envOpts{})
	c := e.client(ctx)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				// Echo until EOF, then say bye: checks half-close.
				io.Copy(conn, conn)
				io.WriteString(conn, "bye")
				conn.Close()
			}()
		}
	}()
	conn, err := c.DialTCP(ctx, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(conn, "hello over the agent")
	conn.(interface{ CloseWrite() error }).CloseWrite()
	got, err := io.ReadAll(conn)
	if err != nil || string(got) != "hello over the agent"+"bye" {
		t.Fatalf("got %q, %v", got, err)
	}
	conn.Close()
	// A closed port is refused with an error, not a hang.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l2.Addr().String()
	l2.Close()
	if _, err := c.DialTCP(ctx, addr); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
}
