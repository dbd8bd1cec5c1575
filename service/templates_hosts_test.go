package service

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// writeTemplate records a complete warm template of minimal@1 under a
// state directory, as the engine does.
func writeTemplate(t *testing.T, stateDir, key string, memMiB int) {
	t.Helper()
	dir := filepath.Join(stateDir, "templates", key)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m := fmt.Sprintf(`{"key":%q,"image":"minimal@1","image_path":"/x","cpus":1,"memory_mib":%d,"disk_gib":1,"disk":"/secret/t.qcow2"}`, key, memMiB)
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), []byte(m), 0o600); err != nil {
		t.Fatal(err)
	}
}

// recordingKeeper is a node's engine that records the templates asked of it.
type recordingKeeper struct {
	engine.Engine
	mu  sync.Mutex
	got []string
}

func (k *recordingKeeper) WarmTemplate(_ context.Context, ref string, cpus, memMiB, diskGiB int, progress engine.Progress) (engine.Template, error) {
	k.mu.Lock()
	k.got = append(k.got, ref+" "+strconv.Itoa(cpus)+" "+strconv.Itoa(memMiB)+" "+strconv.Itoa(diskGiB))
	k.mu.Unlock()
	progress.Say("boot")
	return engine.Template{Key: "feedfacefeedface", Image: ref + "@1", CPUs: cpus, MemoryMiB: memMiB, DiskGiB: diskGiB, Disk: "/secret/d.qcow2"}, nil
}

func (k *recordingKeeper) Templates(context.Context) ([]engine.Template, error) { return nil, nil }

// TestTemplatesOfEachHost: the image listing's templates are those of the
// control plane's host and of each node it reaches (over the fabric,
// named by host; a node not heard from is left out), and `image warm
// --host` builds on the host it names, admins only; a bad or unknown
// host changes nothing.
func TestTemplatesOfEachHost(t *testing.T) {
	th := newTwoHosts(t)
	svc := th.cp.svc
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	writeTemplate(t, svc.cfg.StateDir, "aaaaaaaaaaaaaaaa", 256)
	writeTemplate(t, th.node.svc.cfg.StateDir, "bbbbbbbbbbbbbbbb", 512)

	got := func() string {
		var s []string
		for _, ti := range svc.templatesByImage(ctx)["minimal@1"] {
			s = append(s, ti.Host+":"+ti.Key+":"+strconv.Itoa(ti.MemoryMiB))
		}
		return strings.Join(s, " ")
	}
	if g := got(); g != "cp:aaaaaaaaaaaaaaaa:256 node-b:bbbbbbbbbbbbbbbb:512" {
		t.Fatalf("templates = %q; want the cp's and node-b's, by host", g)
	}
	th.clock.Add(8 * time.Second) // node-b not heard from: unreachable
	if g := got(); g != "cp:aaaaaaaaaaaaaaaa:256" {
		t.Fatalf("templates with node-b unreachable = %q; want the cp's only", g)
	}
	th.heartbeat(t)

	// Over the fabric to the node's own engine: its fake driver keeps no
	// templates, and says so.
	if _, err := svc.WarmImage(ctx, th.admin, WarmRequest{Image: "minimal", Host: "node-b"}, nil); !errors.Is(err, errs.FailedPrecondition) ||
		!strings.Contains(err.Error(), "warm templates are off") {
		t.Fatalf("warm on node-b (no templates there) = %v; want the node's FailedPrecondition", err)
	}
	k := &recordingKeeper{Engine: th.remote}
	svc.SetRemoteEngine(th.nodeID, k)
	for _, c := range []struct {
		who  Caller
		host string
		want *errs.Class
	}{
		{th.alice, "node-b", errs.PermissionDenied},
		{th.admin, "nosuch", errs.NotFound},
		{th.admin, "bad name", errs.InvalidArgument},
		{th.admin, "cp", errs.FailedPrecondition}, // the cp's own engine: its fake driver keeps none
	} {
		if _, err := svc.WarmImage(ctx, c.who, WarmRequest{Image: "minimal", Host: c.host}, nil); !errors.Is(err, c.want) {
			t.Errorf("warm on %q = %v; want %v", c.host, err, c.want)
		}
	}
	if len(k.got) != 0 {
		t.Fatalf("refused warms reached node-b: %v", k.got)
	}
	var steps []string
	ti, err := svc.WarmImage(ctx, th.admin, WarmRequest{Image: "minimal", Host: "node-b", MemoryMiB: 384}, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	want := "minimal " + strconv.Itoa(svc.cfg.DefaultCPUs) + " 384 " + strconv.Itoa(svc.defaultDisk(ctx, "minimal"))
	if strings.Join(k.got, ",") != want || ti.Host != "node-b" || ti.MemoryMiB != 384 || strings.Join(steps, " ") != "boot" {
		t.Fatalf("warm on node-b: asked %v (want %q), got %+v, progress %v", k.got, want, ti, steps)
	}
	th.clock.Add(8 * time.Second)
	if _, err := svc.WarmImage(ctx, th.admin, WarmRequest{Image: "minimal", Host: "node-b"}, nil); !errors.Is(err, errs.Unavailable) || len(k.got) != 1 {
		t.Fatalf("warm on an unreachable node-b = %v (asked %v); want Unavailable, nothing asked", err, k.got)
	}
}
