package nodeagent

import (
	"bufio"
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

// BenchmarkDiskStreamCPU sends a 1 GiB disk stream (random bytes, from
// memory, to nowhere: no disk) through one TLS 1.3 connection over
// loopback TCP, with the disk stream's connection wrappers (batchedTLS
// writing, readAhead reading), in one process: it reports the CPU
// seconds both ends used per GiB (user and system, from getrusage) and
// the rate. What a move spends besides its disk.
//
//	go test -count=1 -run '^$' -bench DiskStreamCPU -benchtime 3x ./nodeagent/
func BenchmarkDiskStreamCPU(b *testing.B) {
	cert, _, err := fabric.NodeCertificate("t")
	if err != nil {
		b.Fatal(err)
	}
	const size = 1 << 30
	src := make([]byte, 64<<20)
	rand.Read(src)
	var cpu, secs float64
	for range b.N {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		acc := make(chan net.Conn, 1)
		go func() { c, _ := ln.Accept(); acc <- c }()
		a, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c := <-acc
		ln.Close()
		ra := &readAhead{Conn: c}
		srv := tls.Server(ra, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		bc := &batchConn{Conn: a}
		cli := &batchedTLS{Conn: tls.Client(bc, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}), raw: bc}
		hs := make(chan error, 1)
		go func() { hs <- srv.Handshake() }()
		if err := cli.Handshake(); err != nil {
			b.Fatal(err)
		}
		if err := <-hs; err != nil {
			b.Fatal(err)
		}
		ra.buffer(readAheadSize)
		r0 := rusage(b)
		start := time.Now()
		sent := make(chan error, 1)
		go func() {
			sent <- engine.WriteDiskStream(cli, engine.DiskHeader{ID: vm.NewID(), Size: size}, &repeat{b: src, left: size})
		}()
		br := bufio.NewReaderSize(srv, 64<<10)
		h, err := engine.ReadDiskHeader(br)
		if err != nil {
			b.Fatal(err)
		}
		if err := engine.ReadDiskBody(br, h, io.Discard); err != nil {
			b.Fatal(err)
		}
		if err := <-sent; err != nil {
			b.Fatal(err)
		}
		secs += time.Since(start).Seconds()
		cpu += rusage(b) - r0
		cli.Close()
		srv.Close()
	}
	b.ReportMetric(cpu/float64(b.N), "cpu-s/GiB")
	b.ReportMetric(float64(b.N)*size/(1<<20)/secs, "MiB/s")
}

func rusage(b *testing.B) float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// repeat reads b over and over, left bytes in all.
type repeat struct {
	b    []byte
	off  int
	left int64
}

func (r *repeat) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(int64(len(p)), r.left)], r.b[r.off:])
	r.off = (r.off + n) % len(r.b)
	r.left -= int64(n)
	return n, nil
}
