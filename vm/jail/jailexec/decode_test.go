package jailexec

import (
	"encoding/json"
	"reflect"
	"testing"
)

var testPlans = []Plan{
	{UID: 2_000_000_043, GID: 2_000_000_043, Dir: "/", Argv: []string{"/bin/sh", "-c", "id -u"}},
	{UID: 1, GID: -2, Groups: []int{0, 993, 44}, Cgroup: "/sys/fs/cgroup/minions/vm-1",
		Hide: []string{"/var/lib/minions", "/run/minions"}, Binds: []Bind{{Path: "/var/lib/minions/vms/x"}, {Path: "/ro path", ReadOnly: true}},
		Check: []Access{{Path: "/dev/kvm", Mode: "rw"}, {Path: "/usr/bin/qemu", Mode: "x"}},
		Dir:   "/var/lib/minions/vms/x", Argv: []string{"/usr/bin/qemu-system-x86_64", "-name", "a<b>&c\"d\\e\n\t\x01", "é€😀", "\xff\xfe", ""}},
	{UID: 7, GID: 7, Dir: "/run", Argv: []string{"/usr/lib/minions/minions-relay", "agent-relay"}, Env: []string{"GOMAXPROCS=1", "X=a=b"}},
	{Groups: []int{}, Hide: []string{}, Binds: []Bind{}, Check: []Access{}, Argv: []string{}},
}

// TestParsePlanAsJSON: ParsePlan reads what json.Marshal writes of a plan
// and gets what json.Unmarshal gets.
func TestParsePlanAsJSON(t *testing.T) {
	for _, p := range testPlans {
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		var want Plan
		if err := json.Unmarshal(b, &want); err != nil {
			t.Fatal(err)
		}
		got, err := ParsePlan(string(b))
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %#v\nwant %#v", b, got, want)
		}
	}
	for _, s := range []string{
		`{"uid":1,"gid":1,"dir":"/","argv":["a"], "hide": null, "groups": null, "binds": null}`,
		` { "uid" : 1 , "argv" : [ "\u00e9\ud83d\ude00\ud800x\/" ] } `,
		`{"argv":["\ud800\u0041", "\udc00"]}`,
		`{}`,
	} {
		var want Plan
		if err := json.Unmarshal([]byte(s), &want); err != nil {
			t.Fatal(err)
		}
		got, err := ParsePlan(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n got %#v\nwant %#v", s, got, want)
		}
	}
}

// TestParsePlanRefuses: malformed JSON and what the plan does not have are
// errors.
func TestParsePlanRefuses(t *testing.T) {
	for _, s := range []string{"", "{not json", `{"uid":1`, `{"uid":1.5}`, `{"uid":1e3}`, `{"uid":01}`, `{"uid":"1"}`,
		`{"uid":99999999999999999999}`, `{"argv":["a\x01"]}`, `{"argv":["a]}`, `{"argv":["\q"]}`, `{"argv":["\u12"]}`,
		`{"nope":1}`, `{"UID":1}`, `{"binds":[{"path":"a","rw":true}]}`, `{"binds":[null]}`, `{} {}`, `{"uid":1,}`, `{"hide":["a",]}`,
		`{"binds":[{"ro":yes}]}`, `[]`} {
		if p, err := ParsePlan(s); err == nil {
			t.Errorf("%q: parsed as %#v", s, p)
		}
	}
}

// FuzzParsePlan: whatever ParsePlan accepts, json.Unmarshal accepts too
// and reads the same.
func FuzzParsePlan(f *testing.F) {
	for _, p := range testPlans {
		b, _ := json.Marshal(p)
		f.Add(string(b))
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParsePlan(s)
		if err != nil {
			return
		}
		var want Plan
		if err := json.Unmarshal([]byte(s), &want); err != nil {
			t.Fatalf("%q: ParsePlan accepted what json.Unmarshal refuses: %v", s, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%q:\n got %#v\nwant %#v", s, got, want)
		}
	})
}
