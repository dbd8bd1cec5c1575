package gateway

import (
	"bytes"
	"crypto/rand"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"
)

// The gateway's overhead: the same work through the gateway (user client ->
// gateway -> agent) and straight on the host's agent client, as an agent
// exec or an agent file copy would do it.
//
//	go test -run '^$' -bench . -benchtime 3s ./gateway/
//
// Besides wall time each benchmark reports cpu-ms/op (user+system CPU of
// the whole process: client, gateway and agent), which is far less
// sensitive than wall time to other load on a shared machine.

// cpuMeter reports the process CPU time used during a benchmark.
type cpuMeter struct{ start time.Duration }

func cpuNow() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func startCPU(b *testing.B) *cpuMeter {
	b.ResetTimer()
	return &cpuMeter{start: cpuNow()}
}

func (m *cpuMeter) stop(b *testing.B) {
	b.StopTimer()
	b.ReportMetric(float64(cpuNow()-m.start)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
}

func benchClients(b *testing.B) (direct, gateway *gossh.Client) {
	h := newHarnessWith(b, guestAgent, nil) // the real agent's SSH server
	return h.vms.client, h.dial("web", h.alice)
}

func BenchmarkExecTrue(b *testing.B) {
	direct, gw := benchClients(b)
	for _, bc := range []struct {
		name string
		c    *gossh.Client
	}{{"direct", direct}, {"gateway", gw}} {
		b.Run(bc.name, func(b *testing.B) {
			m := startCPU(b)
			defer m.stop(b)
			for i := 0; i < b.N; i++ {
				s, err := bc.c.NewSession()
				if err != nil {
					b.Fatal(err)
				}
				if err := s.Run("true"); err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
		})
	}
}

func BenchmarkSFTPWrite(b *testing.B) {
	direct, gw := benchClients(b)
	data := make([]byte, 32<<20)
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		c    *gossh.Client
	}{{"direct", direct}, {"gateway", gw}} {
		b.Run(bc.name, func(b *testing.B) {
			sc, err := sftp.NewClient(bc.c, sftp.UseConcurrentWrites(true))
			if err != nil {
				b.Fatal(err)
			}
			defer sc.Close()
			b.SetBytes(int64(len(data)))
			m := startCPU(b)
			defer m.stop(b)
			for i := 0; i < b.N; i++ {
				f, err := sc.Create("bench.bin")
				if err != nil {
					b.Fatal(err)
				}
				if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
					b.Fatal(err)
				}
				if err := f.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSFTPRead(b *testing.B) {
	direct, gw := benchClients(b)
	data := make([]byte, 32<<20)
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		c    *gossh.Client
	}{{"direct", direct}, {"gateway", gw}} {
		b.Run(bc.name, func(b *testing.B) {
			sc, err := sftp.NewClient(bc.c)
			if err != nil {
				b.Fatal(err)
			}
			defer sc.Close()
			f, err := sc.Create("bench-read.bin")
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.ReadFrom(bytes.NewReader(data)); err != nil {
				b.Fatal(err)
			}
			f.Close()
			var sink bytes.Buffer
			b.SetBytes(int64(len(data)))
			m := startCPU(b)
			defer m.stop(b)
			for i := 0; i < b.N; i++ {
				f, err := sc.Open("bench-read.bin")
				if err != nil {
					b.Fatal(err)
				}
				sink.Reset()
				if _, err := f.WriteTo(&sink); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
}
