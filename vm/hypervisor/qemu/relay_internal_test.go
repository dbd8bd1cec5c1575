package qemu

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// goneStream is a stream to a target that is gone: reads wait, writes
// fail.
type goneStream struct{ closed chan struct{} }

func (b goneStream) Read(p []byte) (int, error) { <-b.closed; return 0, errors.New("closed") }
func (b goneStream) Write(p []byte) (int, error) {
	return 0, errors.New("stream broken")
}
func (b goneStream) Close() error { return nil }

// TestRelayBrokenStreamFailsQEMUsWrites: when the stream of a migration
// channel breaks (its target died: e2e TestMultiHostMoveCrash
// live-out/mirrored/dst), QEMU's writes into its end of the socketpair
// fail, so its migration ends; before, the relay stopped reading and QEMU
// blocked on a full socket buffer for ever.
func TestRelayBrokenStreamFailsQEMUsWrites(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	qemuEnd := os.NewFile(uintptr(fds[0]), "qemu")
	defer qemuEnd.Close()
	mine := os.NewFile(uintptr(fds[1]), "relay")
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		t.Fatal(err)
	}
	st := goneStream{closed: make(chan struct{})}
	defer close(st.closed)
	r := startRelay(conn, st)
	defer r.close()
	wrote := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<20)
		for i := 0; i < 64; i++ { // far beyond any socket buffer
			if _, err := qemuEnd.Write(buf); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	}()
	select {
	case err := <-wrote:
		if err == nil {
			t.Fatal("64 MiB written into a relay whose stream is broken")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("QEMU's end blocks on a relay whose stream is broken")
	}
}
