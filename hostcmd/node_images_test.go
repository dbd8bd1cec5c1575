package hostcmd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm/engine"
	"github.com/minionsdev/minions/vm/hypervisor/fake"
)

// TestNodeEngineFetchesImages: `minions node` gives its engine an Images
// that asks the control plane it joined (signed with the node's key) for
// an image the node lacks; a credential without a control plane URL
// leaves the local catalogue alone. (The fetch itself: nodeagent's
// TestFetch* and TestRemoteCreateFetchesImage.)
func TestNodeEngineFetchesImages(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	var mu sync.Mutex
	var asked []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.URL.Path+" "+strings.Fields(r.Header.Get("Authorization") + " -")[0])
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"error":{"code":%q,"message":"not you"}}`, errs.Code(errs.New(errs.PermissionDenied, "x")))
	}))
	defer srv.Close()

	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	hostKey, _ := ssh.NewSignerFromKey(priv)
	cat := &images.Catalog{Dir: filepath.Join(dir, "images")}
	catImages := engine.CatalogImages{Cat: cat, Agent: func() (string, error) { return "/nonexistent", nil }}
	open := func() *local.Installation {
		eng, err := engine.NewLocal(engine.Config{StateDir: filepath.Join(dir, "state"), ReadyTimeout: time.Second, StopTimeout: time.Second},
			engine.Deps{DB: db, Driver: fake.New(fake.Config{}), Network: nopNet{}, Images: catImages, Disks: engine.HostDisks{}, HostKey: hostKey})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { eng.Close() })
		return &local.Installation{Images: cat, Engine: eng}
	}
	seed, _, err := fabric.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}

	inst := open()
	if err := fetchImages(inst, nodeagent.Credential{HostID: "n1", Control: srv.URL, Seed: seed}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := inst.Engine.Images.Resolve(ctx, "minimal"); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("resolve on the node: %v, want the control plane's refusal", err)
	}
	mu.Lock()
	got := strings.Join(asked, ",")
	mu.Unlock()
	if got != "/v1/fabric/images/minimal "+fabric.NodeAuthScheme {
		t.Fatalf("the control plane was asked %q", got)
	}

	inst = open()
	if err := fetchImages(inst, nodeagent.Credential{HostID: "n1", Seed: seed}, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := inst.Engine.Images.(engine.CatalogImages); !ok {
		t.Fatalf("without a control plane URL the engine's images are %T", inst.Engine.Images)
	}
	if _, err := inst.Engine.Images.Resolve(ctx, "minimal"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("local resolve: %v", err)
	}
	if err := fetchImages(open(), nodeagent.Credential{HostID: "n1", Control: "ftp://x", Seed: seed}, nil); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("a bad control plane URL: %v", err)
	}
}
