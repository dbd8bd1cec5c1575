package api_test

import (
	"io"
	"net/http"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/minionsdev/minions/api"
)

type op struct{ method, path string }

func documentedOps(t testing.TB) []op {
	t.Helper()
	var doc struct {
		OpenAPI string                          `yaml:"openapi"`
		Paths   map[string]map[string]yaml.Node `yaml:"paths"`
	}
	if err := yaml.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi version %q", doc.OpenAPI)
	}
	var ops []op
	for path, item := range doc.Paths {
		for m, node := range item {
			if m == "parameters" {
				continue
			}
			var o map[string]any
			if err := node.Decode(&o); err != nil {
				t.Fatalf("%s %s: %v", m, path, err)
			}
			if o["operationId"] == nil || o["responses"] == nil {
				t.Errorf("%s %s: no operationId or responses", m, path)
			}
			ops = append(ops, op{strings.ToUpper(m), path})
		}
	}
	sort.Slice(ops, func(i, j int) bool { return ops[i].path+ops[i].method < ops[j].path+ops[j].method })
	return ops
}

// TestOpenAPIMatchesRoutes checks that every route the handler registers is
// documented and every documented operation is a registered route.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	routes := api.Routes()
	registered := map[op]bool{}
	for _, r := range routes {
		registered[op{r.Method, r.Path}] = true
	}
	documented := map[op]bool{}
	for _, o := range documentedOps(t) {
		documented[o] = true
		if !registered[o] {
			t.Errorf("documented but not served: %s %s", o.method, o.path)
		}
	}
	for o := range registered {
		if !documented[o] {
			t.Errorf("served but not documented: %s %s", o.method, o.path)
		}
	}

	// And the real mux routes each documented operation to its pattern:
	// a request for it is not answered by the catch-all or with 405.
	fx := newFixture(t)
	for o := range documented {
		path := strings.NewReplacer("{name}", "nope", "{snapshot}", "nope", "{id}", "nope").Replace(o.path)
		req, _ := http.NewRequest(o.method, fx.url+path, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusMethodNotAllowed || strings.Contains(string(b), "no route") {
			t.Errorf("%s %s is not routed: %d %s", o.method, o.path, resp.StatusCode, b)
		}
	}
	resp, err := http.Get(fx.url + "/v1/openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != string(api.OpenAPI) {
		t.Fatalf("served document: %d, %d bytes", resp.StatusCode, len(b))
	}
}
