package guestagent

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// FindPort returns the /dev node of the virtio-serial port called name, as
// listed in /sys/class/virtio-ports/*/name (there are no udev symlinks in
// the minimal image).
func FindPort(name string) (string, error) {
	dirs, _ := filepath.Glob("/sys/class/virtio-ports/*")
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "name"))
		if err == nil && strings.TrimSpace(string(b)) == name {
			return "/dev/" + filepath.Base(d), nil
		}
	}
	return "", fmt.Errorf("virtio port %q: %w", name, os.ErrNotExist)
}

// PortOpener returns an opener for link.Serve: it opens the port at dev
// and blocks until a host is connected to it. While no host is connected
// the port reports POLLHUP (and reads return EOF), so it sleeps on SIGIO,
// which the driver sends when the host side opens, with a slow poll as a
// fallback.
func PortOpener(dev string) func(context.Context) (io.ReadWriteCloser, error) {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		fd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", dev, err)
		}
		sigio := make(chan os.Signal, 1)
		signal.Notify(sigio, syscall.SIGIO)
		defer signal.Stop(sigio)
		unix.FcntlInt(uintptr(fd), unix.F_SETOWN, unix.Getpid())
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
			unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl|unix.O_ASYNC)
		}
		for {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			_, err := unix.Poll(pfd, 0)
			if err != nil && err != unix.EINTR {
				unix.Close(fd)
				return nil, fmt.Errorf("poll %s: %w", dev, err)
			}
			if err == nil && pfd[0].Revents&unix.POLLHUP == 0 {
				break
			}
			t := time.NewTimer(250 * time.Millisecond)
			select {
			case <-ctx.Done():
				t.Stop()
				unix.Close(fd)
				return nil, ctx.Err()
			case <-sigio:
			case <-t.C:
			}
			t.Stop()
		}
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
			unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_ASYNC)
		}
		return os.NewFile(uintptr(fd), dev), nil
	}
}
