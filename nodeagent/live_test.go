package nodeagent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor"
)

// liveEngine is a node engine with a pretend live migration: the target
// "QEMU" behind DialIncoming hashes what it receives on a channel and
// answers the hash when the sender half-closes... a stream cannot
// half-close, so it answers after want bytes; the source sends want
// bytes of random data on each channel and reads the answers.
type liveEngine struct {
	engine.Engine
	want  int
	data  []byte
	got   chan string // channel + hash, from the target side
	prep  engine.IncomingSpec
	trust string
	fails bool
	ended chan error // if set, hears each MigrateOut's end
}

func (e *liveEngine) DescribeOut(ctx context.Context, id string) ([]byte, error) {
	return []byte(`{"agent_key":"k","machine":"bQ=="}`), nil
}
func (e *liveEngine) PrepareIncoming(ctx context.Context, spec engine.IncomingSpec, p engine.Progress) (engine.Instance, error) {
	e.prep = spec
	p.Say("disk")
	return engine.Instance{ID: spec.ID, Name: spec.Name, IP: "10.9.0.5", MAC: "52:54:00:00:00:05"}, nil
}
func (e *liveEngine) DialIncoming(ctx context.Context, id, ch string) (net.Conn, error) {
	if ch != hypervisor.ChannelNBD && ch != hypervisor.ChannelMigration {
		return nil, errs.New(errs.InvalidArgument, "channel %q", ch)
	}
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		h := sha256.New()
		if _, err := io.CopyN(h, b, int64(e.want)); err != nil {
			e.got <- ch + " " + err.Error()
			return
		}
		sum := h.Sum(nil)
		e.got <- ch + " " + string(sum)
		b.Write(sum)
	}()
	return a, nil
}
func (e *liveEngine) AgentTrustKey(ctx context.Context) (string, error) { return "", nil }
func (e *liveEngine) MigrateOut(ctx context.Context, id, trustKey string, nbd, mig io.ReadWriteCloser, p engine.Progress) (st hypervisor.MigrationStats, err error) {
	if e.ended != nil {
		defer func() { e.ended <- err }()
	}
	defer nbd.Close()
	defer mig.Close()
	e.trust = trustKey
	if e.fails {
		return hypervisor.MigrationStats{}, errs.New(errs.Unavailable, "mirror: target gone")
	}
	p.Say("mirror disk")
	want := sha256.Sum256(e.data)
	for _, c := range []io.ReadWriter{nbd, mig} {
		if _, err := c.Write(e.data); err != nil {
			return hypervisor.MigrationStats{}, err
		}
		ans := make([]byte, 32)
		if _, err := io.ReadFull(c, ans); err != nil || !bytes.Equal(ans, want[:]) {
			return hypervisor.MigrationStats{}, errs.New(errs.Unavailable, "answer %x %v", ans, err)
		}
	}
	return hypervisor.MigrationStats{Downtime: 42 * time.Millisecond, RAMBytes: int64(len(e.data))}, nil
}
func (e *liveEngine) FinishIncoming(ctx context.Context, id string, p engine.Progress) (engine.Instance, time.Duration, error) {
	return engine.Instance{ID: id, State: "running"}, 7 * time.Millisecond, nil
}
func (e *liveEngine) AbortIncoming(ctx context.Context, id string) error { return nil }
func (e *liveEngine) ResumeOut(ctx context.Context, id string) error     { return nil }

// TestLiveMoveOverNATS drives a live migration's calls and both of its
// byte channels (8 MiB each way) from node-a to node-b through the
// control plane, over the fabric: the bytes arrive intact in order, the
// answers come back, the stats and progress come through; a failing
// MigrateOut is an error of its class.
func TestLiveMoveOverNATS(t *testing.T) {
	a, b := newFakeLocal(t), newFakeLocal(t)
	data := make([]byte, 8<<20)
	rand.Read(data)
	ea := &liveEngine{Engine: a.eng, want: len(data), data: data, got: make(chan string, 4)}
	eb := &liveEngine{Engine: b.eng, want: len(data), data: data, got: make(chan string, 4)}
	c := newCluster(t)
	serve(t, "node-a", c.node(t, "node-a"), ea)
	serve(t, "node-b", c.node(t, "node-b"), eb)
	ra, rb := c.remote(t, "node-a", a), c.remote(t, "node-b", b)
	waitServed(t, ra)
	waitServed(t, rb)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := "0123456789ab"
	desc, err := ra.DescribeOut(ctx, id)
	if err != nil || string(desc) != `{"agent_key":"k","machine":"bQ=="}` {
		t.Fatalf("DescribeOut = %q %v", desc, err)
	}
	var steps []string
	inst, err := rb.PrepareIncoming(ctx, engine.IncomingSpec{ID: id, Name: "mover", Source: desc}, func(s string) { steps = append(steps, s) })
	if err != nil || inst.IP != "10.9.0.5" || string(eb.prep.Source) != string(desc) {
		t.Fatalf("PrepareIncoming = %+v %v (node got %+v)", inst, err, eb.prep)
	}
	if _, err := rb.DialIncoming(ctx, id, "bogus"); errs.ClassOf(err) != errs.InvalidArgument {
		t.Fatalf("DialIncoming(bogus) = %v", err)
	}
	nbd, err := rb.DialIncoming(ctx, id, hypervisor.ChannelNBD)
	if err != nil {
		t.Fatal(err)
	}
	mig, err := rb.DialIncoming(ctx, id, hypervisor.ChannelMigration)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	st, err := ra.MigrateOut(ctx, id, "ssh-ed25519 AAAA target", nbd, mig, func(s string) { steps = append(steps, s) })
	if err != nil || st.Downtime != 42*time.Millisecond || st.RAMBytes != int64(len(data)) || ea.trust != "ssh-ed25519 AAAA target" {
		t.Fatalf("MigrateOut = %+v %v (trust key %q)", st, err, ea.trust)
	}
	t.Logf("2 x %d MiB through node-a -> control -> node-b in %v", len(data)>>20, time.Since(start))
	want := sha256.Sum256(data)
	for range 2 {
		select {
		case g := <-eb.got:
			if g[len(g)-32:] != string(want[:]) {
				t.Fatalf("target received %q", g)
			}
		case <-ctx.Done():
			t.Fatal("the target did not receive both channels")
		}
	}
	if got, resumed, err := rb.FinishIncoming(ctx, id, nil); err != nil || got.State != "running" || resumed != 7*time.Millisecond {
		t.Fatalf("FinishIncoming = %+v %v %v", got, resumed, err)
	}
	if len(steps) < 2 || steps[0] != "disk" || steps[len(steps)-1] != "mirror disk" {
		t.Errorf("progress %q", steps)
	}
	ea.fails = true
	nbd, _ = rb.DialIncoming(ctx, id, hypervisor.ChannelNBD)
	mig, _ = rb.DialIncoming(ctx, id, hypervisor.ChannelMigration)
	if _, err := ra.MigrateOut(ctx, id, "", nbd, mig, nil); errs.ClassOf(err) != errs.Unavailable {
		t.Fatalf("failing MigrateOut = %v, want Unavailable", err)
	}
	if err := rb.AbortIncoming(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := ra.ResumeOut(ctx, id); err != nil {
		t.Fatal(err)
	}
}
