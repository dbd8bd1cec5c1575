package cloudhypervisor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	yaml "go.yaml.in/yaml/v3"
)

// A small OpenAPI 3 schema validator for the subset Cloud Hypervisor's
// document uses: type, properties, required, items, enum, format (integer
// widths), $ref, additionalProperties, minimum, maximum, minLength. It is
// strict where OpenAPI is lax: an object property the schema does not name
// is an error unless additionalProperties allows it, so a misspelt field
// (which Cloud Hypervisor would silently ignore) fails the test.

// specPath locates the reference copy of the spec from this source file.
func specPath() string {
	if p := os.Getenv("MINIONS_CH_OPENAPI"); p != "" {
		return p
	}
	_, file, _, _ := runtime.Caller(0)
	for dir := filepath.Dir(file); dir != "/"; dir = filepath.Dir(dir) {
		for _, p := range []string{
			filepath.Join(dir, "shared", "reference", "cloud-hypervisor", "cloud-hypervisor.yaml"),
			filepath.Join(dir, "testdata", "cloud-hypervisor.yaml"),
		} {
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	return "/work/shared/reference/cloud-hypervisor/cloud-hypervisor.yaml"
}

type openAPI struct {
	doc     map[string]any
	schemas map[string]any
}

var (
	apiOnce sync.Once
	apiDoc  *openAPI
	apiErr  error
)

// loadAPI parses the spec once per test binary.
func loadAPI(t testing.TB) *openAPI {
	t.Helper()
	apiOnce.Do(func() {
		b, err := os.ReadFile(specPath())
		if err != nil {
			apiErr = err
			return
		}
		var raw any
		if err := yaml.Unmarshal(b, &raw); err != nil {
			apiErr = fmt.Errorf("parse spec: %w", err)
			return
		}
		doc, _ := normalize(raw).(map[string]any)
		comps, _ := doc["components"].(map[string]any)
		schemas, _ := comps["schemas"].(map[string]any)
		if len(schemas) == 0 {
			apiErr = fmt.Errorf("spec has no components.schemas")
			return
		}
		apiDoc = &openAPI{doc: doc, schemas: schemas}
	})
	if apiErr != nil {
		t.Fatalf("load Cloud Hypervisor OpenAPI spec %s: %v", specPath(), apiErr)
	}
	return apiDoc
}

// normalize turns YAML maps with non-string keys (status codes) into
// map[string]any.
func normalize(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = normalize(e)
		}
		return x
	case map[any]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[fmt.Sprint(k)] = normalize(e)
		}
		return m
	case []any:
		for i, e := range x {
			x[i] = normalize(e)
		}
	}
	return v
}

// operation returns the spec of method on endpoint ("vm.create").
func (a *openAPI) operation(method, endpoint string) (map[string]any, error) {
	paths, _ := a.doc["paths"].(map[string]any)
	p, ok := paths["/"+endpoint].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("no path /%s in the spec", endpoint)
	}
	op, ok := p[strings.ToLower(method)].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("no %s /%s in the spec", method, endpoint)
	}
	return op, nil
}

func jsonSchemaOf(x any) map[string]any {
	m, _ := x.(map[string]any)
	c, _ := m["content"].(map[string]any)
	j, _ := c["application/json"].(map[string]any)
	s, _ := j["schema"].(map[string]any)
	return s
}

// ValidateRequest checks a request against the spec: the endpoint and
// method exist, a body is present exactly when the spec has one (or it is
// optional), and the body matches its schema.
func (a *openAPI) ValidateRequest(method, endpoint string, body []byte) error {
	op, err := a.operation(method, endpoint)
	if err != nil {
		return err
	}
	rb, hasBody := op["requestBody"].(map[string]any)
	body = bytes.TrimSpace(body)
	if !hasBody {
		if len(body) > 0 {
			return fmt.Errorf("%s %s: the spec has no request body, got %s", method, endpoint, body)
		}
		return nil
	}
	if len(body) == 0 {
		if req, _ := rb["required"].(bool); req {
			return fmt.Errorf("%s %s: request body required", method, endpoint)
		}
		return nil
	}
	return a.ValidateJSON(jsonSchemaOf(rb), body)
}

// ValidateResponse checks a response body against the schema the spec
// gives for status.
func (a *openAPI) ValidateResponse(method, endpoint string, status int, body []byte) error {
	op, err := a.operation(method, endpoint)
	if err != nil {
		return err
	}
	resps, _ := op["responses"].(map[string]any)
	r, ok := resps[fmt.Sprint(status)]
	if !ok {
		return fmt.Errorf("%s %s: status %d not in the spec", method, endpoint, status)
	}
	s := jsonSchemaOf(r)
	if s == nil {
		if len(bytes.TrimSpace(body)) > 0 {
			return fmt.Errorf("%s %s %d: the spec has no body, got %s", method, endpoint, status, body)
		}
		return nil
	}
	return a.ValidateJSON(s, body)
}

// ValidateJSON decodes body and validates it against schema, reporting all
// violations.
func (a *openAPI) ValidateJSON(schema map[string]any, body []byte) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("body is not JSON: %w", err)
	}
	var problems []string
	a.validate(schema, v, "$", &problems)
	if len(problems) > 0 {
		sort.Strings(problems)
		return fmt.Errorf("schema violations: %s", strings.Join(problems, "; "))
	}
	return nil
}

// knownKeywords are the schema keywords the validator understands or that
// carry no constraint. TestSpecUsesOnlyKnownKeywords checks the spec uses
// no other, so nothing in it is silently ignored.
var knownKeywords = []string{"type", "properties", "required", "items", "enum", "format", "$ref",
	"additionalProperties", "minimum", "maximum", "minLength", "default", "description", "deprecated"}

var intRanges = map[string][2]float64{
	"int8": {math.MinInt8, math.MaxInt8}, "int16": {math.MinInt16, math.MaxInt16},
	"int32": {math.MinInt32, math.MaxInt32}, "int64": {math.MinInt64, math.MaxInt64},
	"uint8": {0, math.MaxUint8}, "uint16": {0, math.MaxUint16}, "uint32": {0, math.MaxUint32},
	"uint64": {0, math.MaxUint64},
}

func (a *openAPI) resolve(s map[string]any) (map[string]any, error) {
	for range 16 {
		ref, ok := s["$ref"].(string)
		if !ok {
			return s, nil
		}
		name, ok := strings.CutPrefix(ref, "#/components/schemas/")
		if !ok {
			return nil, fmt.Errorf("unsupported $ref %q", ref)
		}
		next, ok := a.schemas[name].(map[string]any)
		if !ok {
			return nil, fmt.Errorf("unresolved $ref %q", ref)
		}
		s = next
	}
	return nil, fmt.Errorf("$ref loop")
}

func (a *openAPI) validate(s map[string]any, v any, path string, problems *[]string) {
	bad := func(format string, args ...any) {
		*problems = append(*problems, path+": "+fmt.Sprintf(format, args...))
	}
	s, err := a.resolve(s)
	if err != nil {
		bad("%v", err)
		return
	}
	for k := range s {
		if !slices.Contains(knownKeywords, k) {
			bad("schema uses unsupported keyword %q", k)
		}
	}
	if enum, ok := s["enum"].([]any); ok {
		found := false
		for _, e := range enum {
			if fmt.Sprint(e) == fmt.Sprint(v) {
				found = true
			}
		}
		if !found {
			bad("%v not in enum %v", v, enum)
		}
	}
	typ, _ := s["type"].(string)
	switch typ {
	case "object":
		obj, ok := v.(map[string]any)
		if !ok {
			bad("want object, got %T", v)
			return
		}
		props, _ := s["properties"].(map[string]any)
		if req, ok := s["required"].([]any); ok {
			for _, r := range req {
				if _, ok := obj[fmt.Sprint(r)]; !ok {
					bad("missing required property %q", r)
				}
			}
		}
		for k, e := range obj {
			if ps, ok := props[k].(map[string]any); ok {
				a.validate(ps, e, path+"."+k, problems)
				continue
			}
			switch ap := s["additionalProperties"].(type) {
			case map[string]any:
				a.validate(ap, e, path+"."+k, problems)
			case bool:
				if !ap {
					bad("property %q not allowed", k)
				}
			default:
				bad("unknown property %q (not in the schema)", k)
			}
		}
	case "array":
		arr, ok := v.([]any)
		if !ok {
			bad("want array, got %T", v)
			return
		}
		items, _ := s["items"].(map[string]any)
		for i, e := range arr {
			if items != nil {
				a.validate(items, e, fmt.Sprintf("%s[%d]", path, i), problems)
			}
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			bad("want string, got %T", v)
			return
		}
		if n, ok := s["minLength"].(int); ok && len(str) < n {
			bad("string shorter than %d", n)
		}
	case "integer", "number":
		num, ok := v.(json.Number)
		if !ok {
			bad("want %s, got %T", typ, v)
			return
		}
		f, err := num.Float64()
		if err != nil {
			bad("bad number %s", num)
			return
		}
		if typ == "integer" {
			if _, err := num.Int64(); err != nil && fmt.Sprint(s["format"]) != "uint64" {
				bad("want integer, got %s", num)
				return
			}
			if r, ok := intRanges[fmt.Sprint(s["format"])]; ok && (f < r[0] || f > r[1]) {
				bad("%s out of range for %s", num, s["format"])
			}
		}
		if m, ok := toFloat(s["minimum"]); ok && f < m {
			bad("%s below minimum %v", num, m)
		}
		if m, ok := toFloat(s["maximum"]); ok && f > m {
			bad("%s above maximum %v", num, m)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			bad("want boolean, got %T", v)
		}
	case "":
		// No type: only enum/$ref constraints apply.
	default:
		bad("schema type %q not supported by the validator", typ)
	}
}

func toFloat(x any) (float64, bool) {
	switch n := x.(type) {
	case int:
		return float64(n), true
	case float64:
		return n, true
	}
	return 0, false
}

func TestSpecUsesOnlyKnownKeywords(t *testing.T) {
	a := loadAPI(t)
	var walk func(path string, s map[string]any)
	walk = func(path string, s map[string]any) {
		for k, v := range s {
			if !slices.Contains(knownKeywords, k) {
				t.Errorf("%s: keyword %q not handled by the validator", path, k)
			}
			switch k {
			case "properties":
				for name, p := range v.(map[string]any) {
					walk(path+"."+name, p.(map[string]any))
				}
			case "items":
				walk(path+"[]", v.(map[string]any))
			case "additionalProperties":
				if m, ok := v.(map[string]any); ok {
					walk(path+"{}", m)
				}
			}
		}
	}
	for name, s := range a.schemas {
		walk(name, s.(map[string]any))
	}
	if len(a.schemas) < 40 {
		t.Fatalf("only %d schemas parsed", len(a.schemas))
	}
}

// TestValidatorCatchesViolations proves the validator is not a rubber
// stamp: each body breaks one rule of the spec.
func TestValidatorCatchesViolations(t *testing.T) {
	a := loadAPI(t)
	tests := []struct {
		endpoint, body, want string
	}{
		{"vm.create", `{"payload":{"kernel":"/k"}}`, ""},
		{"vm.create", `{}`, `missing required property "payload"`},
		{"vm.create", `{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":1}}`, `missing required property "max_vcpus"`},
		{"vm.create", `{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":0,"max_vcpus":1}}`, "below minimum"},
		{"vm.create", `{"payload":{"kernel":"/k"},"disks":[{"path":"/d","backing_file":true}]}`, `unknown property "backing_file"`},
		{"vm.create", `{"payload":{"kernel":"/k"},"disks":[{"path":"/d","image_type":"qcow2"}]}`, "not in enum"},
		{"vm.create", `{"payload":{"kernel":"/k"},"serial":{"mode":"File","file":3}}`, "want string"},
		{"vm.create", `{"payload":{"kernel":"/k"},"vsock":{"cid":2,"socket":"/s"}}`, "below minimum"},
		{"vm.create", `{"payload":{"kernel":"/k"},"memory":{"size":"1G"}}`, "want integer"},
		{"vm.create", `{"payload":{"kernel":"/k"},"disks":{"path":"/d"}}`, "want array"},
		{"vm.create", `{"payload":{"kernel":"/k"},"iommu":"yes"}`, "want boolean"},
		{"vm.create", `{"payload":{"kernel":"/k"},"disks":[{"path":"/d","pci_device_id":300}]}`, "out of range for uint8"},
		{"vm.resize", `{"desired_vcpus":2,"desired_ram":1073741824}`, ""},
		{"vm.resize", `{"desired_vcpus":1.5}`, "want integer"},
		{"vm.restore", `{}`, `missing required property "source_url"`},
		{"vm.boot", `{"x":1}`, "no request body"},
		{"vm.snapshot", ``, "request body required"},
		{"vm.nosuch", ``, "no path"},
	}
	for _, tt := range tests {
		err := a.ValidateRequest("PUT", tt.endpoint, []byte(tt.body))
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s %s: unexpected %v", tt.endpoint, tt.body, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s %s: error %v, want one containing %q", tt.endpoint, tt.body, err, tt.want)
		}
	}
	if err := a.ValidateResponse("GET", "vm.info", 200, []byte(`{"config":{"payload":{}},"state":"Running"}`)); err != nil {
		t.Errorf("valid vm.info: %v", err)
	}
	if err := a.ValidateResponse("GET", "vm.info", 200, []byte(`{"config":{"payload":{}},"state":"Booting"}`)); err == nil {
		t.Error("vm.info with an unknown state validated")
	}
}
