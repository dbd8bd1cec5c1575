package main

// The layering of the repository, enforced (tailscale-style dependency
// tests). Read the table as the map of who may use whom:
//
//	main
//	  host cmds    hostcmd (init, image, doctor), backup: host-only commands
//	  daemon       the composition root: builds every subsystem
//	  config       the host's config file (holds the subsystems' Configs)
//	  frontends    cli, tui, gateway, api, proxy       (composed by daemon)
//	  service      policy: who may do what, validation, quotas, users, web
//	  vm/engine    the per-host engine (ops with undo, locks, reconcile)
//	  lower        vm/hypervisor/..., vm/network, vm/disk, vm/jail,
//	               vm/consolelog, vm, images, vsockcli, store
//	  internal     error classes and small helpers, importable by anyone
//	guestagent     runs inside the VM: shares only its wire protocol
//
// Imports point down only. The rules are checked on the production import
// graph (go list, test files excluded), transitively: a package may not
// reach a forbidden one through a third. A rule that names a package which
// does not exist yet (vm/engine, nodeagent) simply matches nothing.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
)

const module = "github.com/minionsdev/minions"

// A rule forbids the packages matching From (but not Skip) to depend on the
// packages matching Not (but not Allow): transitively, or only by a direct
// import when Direct is set. A package may always use its own subtree: an
// import matched by a Not pattern that also matches the importer is
// allowed, except for the pattern "...". Patterns are module-relative: "x"
// is package x, "x/..." is x and everything below it, "..." is all.
type rule struct {
	Why    string
	From   []string
	Skip   []string
	Not    []string
	Allow  []string
	Direct bool
}

var (
	frontends = []string{"cli/...", "tui/...", "gateway/...", "api/...", "proxy/..."}
	// root is the composition root and what is built on it.
	root = []string{"daemon/...", "config/...", "hostcmd/...", "backup/..."}
	// aboveEngine is what nothing at or below the engine may reach.
	aboveEngine = append(append([]string{"service/...", "nodeagent/..."}, root...), frontends...)
)

var rules = []rule{
	{
		Why:   "the guest agent runs inside the VM: it shares only its wire protocol (guestagent/proto, guestagent/link) and internal helpers with the host",
		From:  []string{"guestagent/..."},
		Not:   []string{"..."},
		Allow: []string{"guestagent/...", "internal/..."},
	},
	{
		Why:  "store is the bottom of the control plane: it knows no policy, engine, wiring or frontend",
		From: []string{"store/..."},
		Not:  append([]string{"vm/engine/...", "vsockcli/...", "images/..."}, aboveEngine...),
	},
	{
		Why:  "vm/... (the engine, drivers, network, disk, jail) serves the service, never calls it, and knows no frontend or wiring",
		From: []string{"vm/..."},
		Not:  aboveEngine,
	},
	{
		Why:  "drivers, network and disk are below the engine",
		From: []string{"vm/..."},
		Not:  []string{"vm/engine/..."},
	},
	{
		Why:  "images and vsockcli are tools the engine and service use: they call neither, nor any frontend",
		From: []string{"images/...", "vsockcli/..."},
		Not:  append([]string{"vm/engine/..."}, aboveEngine...),
	},
	{
		Why:  "service is the façade the frontends call: it knows none of them and not the composition root",
		From: []string{"service/..."},
		Not:  append(slices.Clone(root), frontends...),
	},
	{
		Why:  "frontends are built by the composition root, never the other way round",
		From: frontends,
		Not:  root,
	},
	{
		Why:  "the composition root and the config file know nothing of the host commands built on them",
		From: []string{"daemon/...", "config/..."},
		Not:  []string{"hostcmd/...", "backup/..."},
	},
	{
		Why:  "the config file describes the subsystems: it does not build them",
		From: []string{"config/..."},
		Not:  []string{"daemon/..."},
	},
	{
		Why:  "frontends do not import each other (cli may use api's HTTP client)",
		From: []string{"tui/...", "gateway/...", "proxy/...", "api/..."},
		Not:  frontends,
	},
	{
		Why:    "only the composition root (and doctor) knows concrete hypervisor drivers; everything else holds a hypervisor.Driver",
		From:   []string{"..."},
		Skip:   []string{"daemon/...", "hostcmd/...", "vm/hypervisor/conformance/..."}, // hostcmd: doctor probes each driver
		Not:    []string{"vm/hypervisor/qemu/...", "vm/hypervisor/cloudhypervisor/...", "vm/hypervisor/fake/..."},
		Direct: true,
	},
}

// match reports whether module-relative path p matches pattern.
func match(pattern, p string) bool {
	switch {
	case pattern == "...":
		return true
	case strings.HasSuffix(pattern, "/..."):
		base := strings.TrimSuffix(pattern, "/...")
		return p == base || strings.HasPrefix(p, base+"/")
	default:
		return p == pattern
	}
}

func matchAny(patterns []string, p string) bool {
	return slices.ContainsFunc(patterns, func(pat string) bool { return match(pat, p) })
}

// graph maps a module-relative package path to its direct imports inside
// the module (module-relative too).
type graph map[string][]string

// violations checks g against rules and returns one line per forbidden
// dependency, with the import chain that reaches it.
func violations(g graph, rules []rule) []string {
	var out []string
	for _, from := range sortedKeys(g) {
		for _, r := range rules {
			if !matchAny(r.From, from) || matchAny(r.Skip, from) {
				continue
			}
			forbidden := func(to string) bool {
				if matchAny(r.Allow, to) {
					return false
				}
				for _, pat := range r.Not {
					if match(pat, to) && (pat == "..." || !match(pat, from)) {
						return true
					}
				}
				return false
			}
			edges := g
			if r.Direct {
				edges = graph{from: g[from]}
			}
			if chain := path(edges, from, forbidden); chain != nil {
				out = append(out, fmt.Sprintf("%s: %s\n\tbecause %s", from, strings.Join(chain, " -> "), r.Why))
			}
		}
	}
	return out
}

// path finds the shortest import chain from 'from' to a package for which
// bad is true (nil if none).
func path(g graph, from string, bad func(string) bool) []string {
	prev := map[string]string{from: ""}
	queue := []string{from}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, q := range g[p] {
			if _, seen := prev[q]; seen {
				continue
			}
			prev[q] = p
			if bad(q) {
				chain := []string{q}
				for x := p; x != ""; x = prev[x] {
					chain = append([]string{x}, chain...)
				}
				return chain
			}
			queue = append(queue, q)
		}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

type listedPackage struct {
	ImportPath string
	Name       string
	Dir        string
	GoFiles    []string
	Imports    []string
}

var (
	listOnce sync.Once
	listed   []listedPackage
	listErr  error
)

// packages lists the module's packages (production files only) once.
func packages(t *testing.T) []listedPackage {
	t.Helper()
	listOnce.Do(func() {
		cmd := exec.Command("go", "list", "-e", "-json=ImportPath,Name,Dir,GoFiles,Imports", "./...")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			listErr = fmt.Errorf("go list: %v: %s", err, stderr.String())
			return
		}
		dec := json.NewDecoder(bytes.NewReader(out))
		for dec.More() {
			var p listedPackage
			if err := dec.Decode(&p); err != nil {
				listErr = err
				return
			}
			listed = append(listed, p)
		}
	})
	if listErr != nil {
		t.Fatal(listErr)
	}
	return listed
}

func rel(importPath string) (string, bool) {
	if importPath == module {
		return ".", true
	}
	r, ok := strings.CutPrefix(importPath, module+"/")
	return r, ok
}

func moduleGraph(t *testing.T) graph {
	g := graph{}
	for _, p := range packages(t) {
		from, _ := rel(p.ImportPath)
		g[from] = nil
		for _, imp := range p.Imports {
			if to, ok := rel(imp); ok {
				g[from] = append(g[from], to)
			}
		}
	}
	return g
}

// TestImportsPointDown checks the repository against the rule table.
func TestImportsPointDown(t *testing.T) {
	g := moduleGraph(t)
	for _, must := range []string{"guestagent", "store", "service", "cli", "daemon", "vm/hypervisor"} {
		if _, ok := g[must]; !ok {
			t.Fatalf("package %s not listed: is go list looking at the right module?", must)
		}
	}
	for _, v := range violations(g, rules) {
		t.Error(v)
	}
}

// TestImportRulesCatchViolations proves the checker can fail: the real
// graph plus one forbidden edge per rule family must be reported.
func TestImportRulesCatchViolations(t *testing.T) {
	for _, tc := range []struct{ from, to, want string }{
		{"guestagent", "vsockcli", "guestagent: guestagent -> vsockcli"},
		{"guestagent/link", "store", "guestagent/link: guestagent/link -> store"},
		{"store", "service", "store: store -> service"},
		{"vm/network", "service", "vm/network: vm/network -> service"},
		{"vm/hypervisor/qemu", "vm/engine", "vm/hypervisor/qemu: vm/hypervisor/qemu -> vm/engine"},
		{"vm/engine", "cli", "vm/engine: vm/engine -> cli"},
		{"images", "service", "images: images -> service"},
		{"service", "tui", "service: service -> tui"},
		{"service", "daemon", "service: service -> daemon"},
		{"cli", "daemon", "cli: cli -> daemon"},
		{"api", "hostcmd", "api: api -> hostcmd"},
		{"daemon", "backup", "daemon: daemon -> backup"},
		{"config", "daemon", "config: config -> daemon"},
		{"service", "config", "service: service -> config"},
		{"gateway", "tui", "gateway: gateway -> tui"},
		{"service", "vm/hypervisor/qemu", "service: service -> vm/hypervisor/qemu"},
		// Transitive: vm/disk reaches the api through images.
		{"images", "api", "vm/disk: vm/disk -> images -> api"},
	} {
		t.Run(tc.from+"->"+tc.to, func(t *testing.T) {
			g := moduleGraph(t)
			bad := graph{}
			for k, v := range g {
				bad[k] = slices.Clone(v)
			}
			bad[tc.from] = append(bad[tc.from], tc.to)
			if tc.to == "vm/engine" {
				bad["vm/engine"] = append(bad["vm/engine"], "vm/hypervisor")
			}
			if tc.from == "images" && tc.to == "api" {
				bad["vm/disk"] = append(bad["vm/disk"], "images")
			}
			v := violations(bad, rules)
			if !slices.ContainsFunc(v, func(s string) bool { return strings.HasPrefix(s, tc.want) }) {
				t.Errorf("adding %s -> %s: violations %q do not include %q", tc.from, tc.to, v, tc.want)
			}
		})
	}
	// Allowed edges stay allowed.
	for _, ok := range [][2]string{{"cli", "api"}, {"service", "vm/engine"}, {"vm/engine", "vm/hypervisor"}, {"vsockcli", "guestagent/proto"}, {"daemon", "vm/hypervisor/qemu"}, {"hostcmd", "daemon"}, {"backup", "daemon"}, {"daemon", "config"}, {"config", "service"}} {
		g := graph{ok[0]: {ok[1]}, ok[1]: nil}
		if v := violations(g, rules); len(v) > 0 {
			t.Errorf("%s -> %s is allowed, got %q", ok[0], ok[1], v)
		}
	}
}

// TestPackageNames checks that every package is named after its directory
// (commands are main), so no import needs an alias to read well.
func TestPackageNames(t *testing.T) {
	for _, p := range packages(t) {
		if p.Name == "main" {
			continue
		}
		if want := filepath.Base(p.ImportPath); p.Name != want {
			t.Errorf("%s is package %s: name it %s", p.ImportPath, p.Name, want)
		}
	}
}

// TestOneOfEach checks that a concept has one home: the names and values
// below are declared in the package that owns them and referred to from
// everywhere else (tests may spell values out).
func TestOneOfEach(t *testing.T) {
	// Type names that mean one thing in the whole module.
	unique := map[string][]string{"Env": nil}
	// Literals (as they appear in Go source) and the only package directory
	// allowed to contain them.
	literals := []struct{ text, home, what string }{
		{`"10.210.0.0/16"`, "vm/network", "the default subnet (network.DefaultSubnet)"},
		{`"minimal"`, "images", "the minimal image's name (images.OSMinimal, images.DefaultImage)"},
		{`"KMGTPE"`, "internal/units", "a byte formatter (units.Bytes)"},
	}
	fset := token.NewFileSet()
	for _, p := range packages(t) {
		dir, _ := rel(p.ImportPath)
		testSupport := strings.HasSuffix(dir, "test") || strings.Contains(dir, "/conformance")
		for _, f := range p.GoFiles {
			file := filepath.Join(p.Dir, f)
			src, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range literals {
				if !testSupport && dir != l.home && !strings.HasPrefix(dir, l.home+"/") && bytes.Contains(src, []byte(l.text)) {
					t.Errorf("%s/%s spells out %s: %s lives in %s", dir, f, l.text, l.what, l.home)
				}
			}
			af, err := parser.ParseFile(fset, file, src, parser.SkipObjectResolution)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range af.Decls {
				gd, ok := d.(*ast.GenDecl)
				if !ok || gd.Tok != token.TYPE {
					continue
				}
				for _, spec := range gd.Specs {
					name := spec.(*ast.TypeSpec).Name.Name
					if _, ok := unique[name]; ok {
						unique[name] = append(unique[name], dir)
					}
				}
			}
		}
	}
	for name, dirs := range unique {
		if len(dirs) > 1 {
			t.Errorf("type %s is declared in %v: two things with one name; rename the less central one", name, dirs)
		}
	}
}
