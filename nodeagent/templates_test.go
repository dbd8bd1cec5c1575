package nodeagent_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/engine"
)

// keeperEngine is a node's engine keeping warm templates in memory: a
// build of image "nosuch" fails as a missing image does.
type keeperEngine struct {
	slowEngine
	mu    sync.Mutex
	built []engine.Template
}

func (k *keeperEngine) WarmTemplate(_ context.Context, ref string, cpus, memMiB, diskGiB int, progress engine.Progress) (engine.Template, error) {
	if ref == "nosuch" {
		return engine.Template{}, errs.New(errs.NotFound, "no image %q", ref)
	}
	progress.Say("boot")
	progress.Say("save")
	t := engine.Template{Key: "k1", Image: ref + "@1", CPUs: cpus, MemoryMiB: memMiB, DiskGiB: diskGiB,
		CreatedAt: time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC), BuildMillis: 1500}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.built = append(k.built, t)
	return t, nil
}

func (k *keeperEngine) Templates(context.Context) ([]engine.Template, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]engine.Template{}, k.built...), nil
}

// TestTemplatesOverNATS: the control plane builds and lists a node's
// warm templates through Remote (image warm --host NODE, image list), with
// the build's progress and its errors' classes; a node whose engine keeps
// no templates says so.
func TestTemplatesOverNATS(t *testing.T) {
	c := newCluster(t)
	keeper := &keeperEngine{}
	serve(t, "node-a", c.node(t, "node-a"), keeper)
	serve(t, "node-b", c.node(t, "node-b"), slowEngine{})
	a, b := c.remote(t, "node-a", nil), c.remote(t, "node-b", nil)
	waitServed(t, a)
	waitServed(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if ts, err := a.Templates(ctx); err != nil || len(ts) != 0 {
		t.Fatalf("templates before a build = %+v, %v; want none", ts, err)
	}
	var steps []string
	tpl, err := a.WarmTemplate(ctx, "minimal", 2, 384, 3, func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	if tpl.Image != "minimal@1" || tpl.CPUs != 2 || tpl.MemoryMiB != 384 || tpl.DiskGiB != 3 || tpl.BuildMillis != 1500 {
		t.Errorf("warm template = %+v; want minimal@1 at 2 cpus, 384 MiB, 3 GiB", tpl)
	}
	if strings.Join(steps, " ") != "boot save" {
		t.Errorf("progress %v; want boot save", steps)
	}
	ts, err := a.Templates(ctx)
	if err != nil || len(ts) != 1 || ts[0] != tpl {
		t.Fatalf("templates after the build = %+v, %v; want [%+v]", ts, err, tpl)
	}
	if _, err := a.WarmTemplate(ctx, "nosuch", 1, 256, 0, nil); !errors.Is(err, errs.NotFound) {
		t.Errorf("warm a missing image = %v; want NotFound", err)
	}
	if _, err := b.WarmTemplate(ctx, "minimal", 1, 256, 0, nil); !errors.Is(err, errs.FailedPrecondition) || !strings.Contains(err.Error(), "keeps no warm templates") {
		t.Errorf("warm on a node without templates = %v; want FailedPrecondition", err)
	}
	if _, err := b.Templates(ctx); !errors.Is(err, errs.FailedPrecondition) {
		t.Errorf("templates of a node without templates = %v; want FailedPrecondition", err)
	}
}
