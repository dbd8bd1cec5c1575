package nodeagent_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minionsdev/minions/api"
	"github.com/minionsdev/minions/fabric"
	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/nodeagent"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/engine"
)

const (
	testKernel = "6.1.0-99-cloud-amd64"
	adminTok   = "admin-token-for-fetch-tests-0123"
)

// controlCatalog is a control plane's catalogue in a temp dir: a real
// minimal image (images.Catalog.Build: 1 GiB sparse ext4, ~11 MB of
// data) and a stand-in kernel (random bytes where Debian's files would
// be, a modules.dep naming the initramfs modules and one module nodes
// never need).
func controlCatalog(t testing.TB) (*images.Catalog, images.Image) {
	t.Helper()
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4: cannot build a minimal image")
	}
	dir := t.TempDir()
	cat := &images.Catalog{Dir: filepath.Join(dir, "images")}
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho stand-in agent\n"), 0o755)
	if err := writeKernel(cat.KernelDir()); err != nil {
		t.Fatal(err)
	}
	k, err := images.LoadKernel(cat.KernelDir(), testKernel)
	if err != nil {
		t.Fatal(err)
	}
	img, err := cat.Build(context.Background(), images.BuildOptions{OS: images.OSMinimal, AgentBinary: agent, Kernel: &k})
	if err != nil {
		t.Fatal(err)
	}
	return cat, img
}

func writeKernel(kdir string) error {
	d := filepath.Join(kdir, testKernel)
	mods := filepath.Join(d, "modules")
	dep := "kernel/drivers/virtio/virtio_ring.ko:\n" +
		"kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n" +
		"kernel/fs/btrfs/btrfs.ko:\n"
	files := map[string]int{"vmlinuz": 3 << 20, "vmlinux": 6 << 20, "config": 4096,
		"modules/kernel/drivers/virtio/virtio_ring.ko": 40000, "modules/kernel/drivers/virtio/virtio.ko": 30000,
		"modules/kernel/fs/btrfs/btrfs.ko": 2 << 20}
	for _, m := range []string{"virtio_mmio", "virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "vmw_vsock_virtio_transport"} {
		p := "kernel/drivers/virtio/" + m + ".ko"
		dep += p + ": kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n"
		files["modules/"+p] = 20000
	}
	for p, n := range files {
		b := make([]byte, n)
		rand.Read(b)
		if err := os.MkdirAll(filepath.Dir(filepath.Join(d, p)), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(d, p), b, 0o644); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(mods, "modules.dep"), []byte(dep), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d, "kernel.json"), []byte(`{"version":"`+testKernel+`","package":"linux-image-`+testKernel+`"}`), 0o644)
}

// controlPlane is a real control plane's API (service, SQLite, the
// catalogue above) on loopback, with one joined node ("node1", seed) and
// a user "bob" (token bobTok). It counts blob requests by checksum, and
// corrupts the body of those corrupt says so.
type controlPlane struct {
	cat     *images.Catalog
	img     images.Image
	url     string
	svc     *service.Service
	seed    string
	bobTok  string
	corrupt func(sum string) bool

	mu    sync.Mutex
	blobs map[string]int
	bytes int64 // blob response bytes
}

func (c *controlPlane) wire() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// countWriter counts a response's body bytes into c.bytes.
type countWriter struct {
	http.ResponseWriter
	c *controlPlane
}

func (w countWriter) Write(b []byte) (int, error) {
	n, err := w.ResponseWriter.Write(b)
	w.c.mu.Lock()
	w.c.bytes += int64(n)
	w.c.mu.Unlock()
	return n, err
}

func (w countWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func newControlPlane(t testing.TB) *controlPlane {
	t.Helper()
	cat, img := controlCatalog(t)
	dir := t.TempDir()
	ctx := context.Background()
	db, err := store.Open(ctx, filepath.Join(dir, "minions.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho stand-in agent\n"), 0o755)
	svc, err := service.New(service.Config{StateDir: dir, RunDir: filepath.Join(dir, "run"), Log: slog.New(slog.DiscardHandler)},
		service.Deps{DB: db, Engine: engine.Absent{Reason: "test control plane"}, Images: service.NewHostCatalog(cat, func() (string, error) { return agent, nil })})
	if err != nil {
		t.Fatal(err)
	}
	svc.SetHosts(service.HostsConfig{JoinURL: "http://cp.invalid:1", NATSURLs: []string{"nats://cp.invalid:2"}})
	root, err := svc.EnsureUser(ctx, "root", true)
	if err != nil {
		t.Fatal(err)
	}
	inv, err := svc.HostAdd(ctx, root, "node1")
	if err != nil {
		t.Fatal(err)
	}
	seed, pub, err := fabric.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.JoinHost(ctx, service.JoinRequest{Token: inv.Token, NKey: pub}); err != nil {
		t.Fatal(err)
	}
	bob, err := svc.EnsureUser(ctx, "bob", false)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := svc.CreateToken(ctx, bob, "", "t", 0)
	if err != nil {
		t.Fatal(err)
	}
	c := &controlPlane{cat: cat, img: img, svc: svc, seed: seed, bobTok: tok.Secret, blobs: map[string]int{}}
	h := api.NewHandler(api.Config{Service: svc, AdminTokens: []string{adminTok}})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sum, ok := strings.CutPrefix(r.URL.Path, "/v1/fabric/blobs/"); ok {
			c.mu.Lock()
			c.blobs[sum]++
			bad := c.corrupt != nil && c.corrupt(sum)
			c.mu.Unlock()
			w = countWriter{ResponseWriter: w, c: c}
			if bad {
				w = &flipWriter{ResponseWriter: w, at: 40}
			}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	c.url = srv.URL
	return c
}

func (c *controlPlane) requests(sum string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blobs[sum]
}

func (c *controlPlane) setCorrupt(f func(string) bool) {
	c.mu.Lock()
	c.corrupt = f
	c.mu.Unlock()
}

// flipWriter flips the bits of byte at of the body (in the first data
// frame of the sparse encoding: data, not framing).
type flipWriter struct {
	http.ResponseWriter
	n, at int
}

func (f *flipWriter) Write(b []byte) (int, error) {
	if f.n <= f.at && f.at < f.n+len(b) {
		b = append([]byte(nil), b...)
		b[f.at-f.n] ^= 0xff
	}
	f.n += len(b)
	return f.ResponseWriter.Write(b)
}

func (f *flipWriter) Unwrap() http.ResponseWriter { return f.ResponseWriter }

// node is a node's catalogue in a temp dir and its FetchImages.
type node struct {
	cat   *images.Catalog
	fetch *nodeagent.Fetcher
	imgs  nodeagent.FetchImages
}

func newNode(t testing.TB, c *controlPlane) *node {
	t.Helper()
	dir := t.TempDir()
	cat := &images.Catalog{Dir: filepath.Join(dir, "images")}
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("#!/bin/sh\necho node agent\n"), 0o755)
	f, err := nodeagent.NewFetcher(nodeagent.FetchConfig{Control: c.url, Seed: c.seed, Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	return &node{cat: cat, fetch: f, imgs: nodeagent.FetchImages{
		Local: engine.CatalogImages{Cat: cat, Agent: func() (string, error) { return agent, nil }}, Fetcher: f}}
}

// leftovers lists what is in the node's tmp dir (failed downloads must
// leave nothing).
func (n *node) leftovers(t testing.TB) []string {
	ents, err := os.ReadDir(filepath.Join(n.cat.Dir, "tmp"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func sumOf(t testing.TB, p string) string {
	t.Helper()
	s, _, err := images.FileSHA256(p)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestFetchByChecksum: a node lacking the image and kernel a ref names
// asks the control plane, fetches both by checksum (the image's holes
// stay holes), verifies and installs them, and resolves the exact
// version; a second resolve downloads nothing.
func TestFetchByChecksum(t *testing.T) {
	c := newControlPlane(t)
	cpImg := c.img
	n := newNode(t, c)
	ctx := context.Background()

	if _, err := n.cat.Resolve("minimal"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("the node has the image before fetching: %v", err)
	}
	start := time.Now()
	img, err := n.imgs.Resolve(ctx, "minimal")
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if img.Ref != cpImg.Ref() || !strings.HasPrefix(img.Path, n.cat.Dir+"/") || !strings.HasPrefix(img.Kernel, n.cat.KernelDir()+"/"+testKernel+"/") {
		t.Fatalf("resolved %+v, want %s under %s", img, cpImg.Ref(), n.cat.Dir)
	}
	if sumOf(t, img.Path) != sumOf(t, cpImg.Path) {
		t.Fatal("the node's image differs from the control plane's")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(img.Path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 1<<30 || st.Blocks*512 > 64<<20 || st.Mode&0o777 != 0o444 {
		t.Fatalf("node image: size %d, %d bytes allocated, mode %o: want 1 GiB, sparse, 0444", st.Size, st.Blocks*512, st.Mode&0o777)
	}
	for _, f := range []string{"vmlinux", "vmlinuz", "modules/kernel/drivers/virtio/virtio_blk.ko"} {
		if sumOf(t, filepath.Join(n.cat.KernelDir(), testKernel, f)) != sumOf(t, filepath.Join(c.cat.KernelDir(), testKernel, f)) {
			t.Fatalf("kernel file %s differs", f)
		}
	}
	if _, err := os.Stat(filepath.Join(n.cat.KernelDir(), testKernel, "modules/kernel/fs/btrfs/btrfs.ko")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a module the node does not need was fetched: %v", err)
	}
	if img.Initramfs == "" {
		t.Fatal("no initramfs built for the fetched kernel")
	}
	t.Logf("minimal image (%d MiB apparent, %d KiB allocated) + kernel fetched on loopback in %v", st.Size>>20, st.Blocks/2, took)

	rootfsSum := sumOf(t, cpImg.Path)
	if c.requests(rootfsSum) != 1 {
		t.Fatalf("rootfs downloaded %d times", c.requests(rootfsSum))
	}
	if w := c.wire(); w > 64<<20 {
		t.Fatalf("%d bytes on the wire for a sparse 1 GiB image: holes were sent", w)
	}
	// A second node: the control plane's checksums are cached now, as
	// for every fetch after an image's first.
	n2 := newNode(t, c)
	before := c.wire()
	start = time.Now()
	if _, err := n2.imgs.Resolve(ctx, "minimal"); err != nil {
		t.Fatal(err)
	}
	t.Logf("the same on a second node (control plane's sums cached): %v, %d KiB on the wire", time.Since(start), (c.wire()-before)>>10)
	again, err := n.imgs.Resolve(ctx, "minimal")
	if err != nil || again.Path != img.Path {
		t.Fatalf("second resolve: %+v %v", again, err)
	}
	again, err = n.imgs.Resolve(ctx, cpImg.Ref())
	if err != nil || again.Path != img.Path {
		t.Fatalf("resolve of the exact version: %+v %v", again, err)
	}
	if c.requests(rootfsSum) != 2 {
		t.Fatalf("rootfs downloaded %d times by two nodes", c.requests(rootfsSum))
	}
	if _, err := n.imgs.Resolve(ctx, "debian"); !errors.Is(err, errs.NotFound) {
		t.Fatalf("an image the control plane lacks: %v", err)
	}
	if _, err := n.imgs.Resolve(ctx, "Bad/ref"); !errors.Is(err, errs.InvalidArgument) {
		t.Fatalf("a malformed ref: %v", err)
	}
	if l := n.leftovers(t); len(l) != 0 {
		t.Fatalf("left in tmp: %v", l)
	}
}

// corruptRefused: the file whose checksum is bad arrives with a flipped
// byte; the resolve fails, the node's catalogue shows nothing of what
// failed and tmp is empty; once the control plane sends it right, the
// fetch succeeds.
func corruptRefused(t *testing.T, bad func(c *controlPlane) string, installed func(n *node) bool) {
	c := newControlPlane(t)
	n := newNode(t, c)
	sum := bad(c)
	c.setCorrupt(func(s string) bool { return s == sum })
	_, err := n.imgs.Resolve(context.Background(), "minimal")
	if !errors.Is(err, images.ErrCorrupt) || !errors.Is(err, errs.Unavailable) {
		t.Fatalf("corrupt download: %v", err)
	}
	t.Logf("refused: %v", err)
	if installed(n) {
		t.Fatal("the corrupt download was installed")
	}
	if l := n.leftovers(t); len(l) != 0 {
		t.Fatalf("left in tmp: %v", l)
	}
	if c.requests(sum) != 1 {
		t.Fatalf("corrupt file requested %d times", c.requests(sum))
	}
	c.setCorrupt(nil)
	if _, err := n.imgs.Resolve(context.Background(), "minimal"); err != nil {
		t.Fatalf("after the control plane is fixed: %v", err)
	}
	if !installed(n) {
		t.Fatal("not installed after a good download")
	}
}

func TestFetchCorruptImageRefused(t *testing.T) {
	corruptRefused(t, func(c *controlPlane) string { return sumOf(t, c.img.Path) },
		func(n *node) bool { _, err := n.cat.Resolve("minimal"); return err == nil })
}

func TestFetchCorruptKernelRefused(t *testing.T) {
	corruptRefused(t, func(c *controlPlane) string { return sumOf(t, filepath.Join(c.cat.KernelDir(), testKernel, "vmlinux")) },
		func(n *node) bool { _, err := images.LoadKernel(n.cat.KernelDir(), testKernel); return err == nil })
}

// TestFetchConcurrentOneDownload: four creates resolving the same
// missing image at once share one download.
func TestFetchConcurrentOneDownload(t *testing.T) {
	c := newControlPlane(t)
	cpImg := c.img
	n := newNode(t, c)
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	paths := make([]string, 4)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			img, err := n.imgs.Resolve(context.Background(), "minimal")
			paths[i] = img.Path
			errc <- err
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range paths {
		if p != paths[0] || p == "" {
			t.Fatalf("paths %v", paths)
		}
	}
	if got := c.requests(sumOf(t, cpImg.Path)); got != 1 {
		t.Fatalf("4 concurrent fetches made %d downloads of the image", got)
	}
	if got := c.requests(sumOf(t, filepath.Join(c.cat.KernelDir(), testKernel, "vmlinux"))); got != 1 {
		t.Fatalf("4 concurrent fetches made %d downloads of the kernel", got)
	}
}

// TestFetchAuth: only a registered node's signed request, or an admin,
// gets images; everyone else 403.
func TestFetchAuth(t *testing.T) {
	c := newControlPlane(t)
	cpImg := c.img
	sum := sumOf(t, filepath.Join(c.cat.KernelDir(), testKernel, "vmlinuz"))
	otherSeed, _, err := fabric.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	sign := func(seed, uri string, at time.Time) string {
		h, err := fabric.SignRequest(seed, http.MethodGet, uri, at)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	nodePub, err := fabric.PublicKeyOf(c.seed)
	if err != nil {
		t.Fatal(err)
	}
	claim := func(header, pub string) string {
		f := strings.Fields(header)
		f[1] = pub
		return strings.Join(f, " ")
	}
	bundle := "/v1/fabric/images/minimal"
	blob := "/v1/fabric/blobs/" + sum
	now := time.Now()
	for _, tc := range []struct {
		name, path, auth string
		want             int
	}{
		{"unsigned bundle", bundle, "", 403},
		{"unsigned blob", blob, "", 403},
		{"user token", bundle, "Bearer " + c.bobTok, 403},
		{"user token blob", blob, "Bearer " + c.bobTok, 403},
		{"bad token", bundle, "Bearer not-a-token-at-all-000000", 403},
		{"unregistered node key", bundle, sign(otherSeed, bundle, now), 403},
		{"signature for another request", blob, sign(c.seed, bundle, now), 403},
		{"stale signature", bundle, sign(c.seed, bundle, now.Add(-10*time.Minute)), 403},
		{"the node's key claimed, another key's signature", bundle, claim(sign(otherSeed, bundle, now), nodePub), 403},
		{"admin token", bundle, "Bearer " + adminTok, 200},
		{"admin token blob", blob, "Bearer " + adminTok, 200},
		{"node", bundle, sign(c.seed, bundle, now), 200},
		{"node blob", blob, sign(c.seed, blob, now), 200},
	} {
		req, _ := http.NewRequest(http.MethodGet, c.url+tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, resp.StatusCode, b, tc.want)
		}
		if tc.want == 200 && tc.path == bundle && !strings.Contains(string(b), cpImg.Ref()) {
			t.Errorf("%s: bundle %s does not name %s", tc.name, b, cpImg.Ref())
		}
		if tc.want == 200 && tc.path == blob && len(b) != 3<<20 {
			t.Errorf("%s: blob of %d bytes", tc.name, len(b))
		}
	}
	// A removed host's key is refused at once.
	root, _ := c.svc.EnsureUser(context.Background(), "root", true)
	if err := c.svc.HostRemove(context.Background(), root, "node1"); err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, c.url+bundle, nil)
	req.Header.Set("Authorization", sign(c.seed, bundle, time.Now()))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 403 {
		t.Fatalf("removed host: %d", resp.StatusCode)
	}
	// The node's fetcher reports the refusal with its class.
	n := newNode(t, c)
	if _, err := n.imgs.Resolve(context.Background(), "minimal"); !errors.Is(err, errs.PermissionDenied) {
		t.Fatalf("fetch by a removed host: %v", err)
	}
}

// TestRemoteCreateFetchesImage: a create sent over the fabric to a node
// whose engine lacks the image fetches it from the control plane first,
// then boots from the fetched copy.
func TestRemoteCreateFetchesImage(t *testing.T) {
	fl := newFakeLocal(t)
	c := newControlPlane(t)
	cpImg := c.img
	n := newNode(t, c)
	fl.eng.Images = n.imgs // as `minions node` sets it (hostcmd/node.go)

	cl := newCluster(t)
	serve(t, "node-a", cl.node(t, "node-a"), fl.eng)
	r := cl.remote(t, "node-a", fl)
	waitServed(t, r)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var steps []string
	inst, err := r.Create(ctx, engine.CreateSpec{ID: vm.NewID(), Name: "fetched", Owner: fl.owner, Image: "minimal", CPUs: 1, MemoryMiB: 256},
		func(s string) { steps = append(steps, s) })
	if err != nil {
		t.Fatal(err)
	}
	defer r.Destroy(context.Background(), inst.ID)
	if inst.Image != cpImg.Ref() || inst.State != vm.Running {
		t.Fatalf("instance %+v, want %s running", inst, cpImg.Ref())
	}
	if c.requests(sumOf(t, cpImg.Path)) != 1 {
		t.Fatal("the node did not fetch the image")
	}
	if _, err := n.cat.Resolve(cpImg.Ref()); err != nil {
		t.Fatalf("the node's catalogue lacks the fetched image: %v", err)
	}
	t.Logf("steps %v", steps)
}
