package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/minionsdev/minions/vm/engine"
)

// TestImageWarmRemote: an admin builds a warm template over the HTTP API
// (`minions --host URL image warm`), its steps on stderr; `image list`
// over the API shows it under its image version, to any signed-in user; a
// create of that shape restores from it; a user who is not an admin is
// refused, and nothing is built for them.
func TestImageWarmRemote(t *testing.T) {
	setup(t)
	dropNewTemplates(t) // before the daemon: runs after it stopped
	api := loopback(freeTCPPort(t))
	startServe(t, fmt.Sprintf("no_warm = false\nbind = %q\nadmin_bind = %q\nssh_bind = %q\n",
		api, loopback(freeTCPPort(t)), loopback(freeTCPPort(t))), api)
	must(t, "user", "add", "warmadm", "--admin")
	must(t, "user", "add", "warmusr")
	admin, user := tokenFor(t, "warmadm"), tokenFor(t, "warmusr")
	remote := func(tok string, args ...string) result {
		return minions(t, "", append([]string{"--host", "http://" + api, "--api-key", tok}, args...)...)
	}
	// A shape no other test uses: no background build makes it.
	const mem = 320

	if r := remote(user, "image", "warm", "minimal", "--memory", fmt.Sprint(mem)); r.code == 0 || !strings.Contains(r.stderr, "admin") {
		t.Fatalf("image warm as a user: %s", r)
	}
	for _, tp := range templatesHere(t) {
		if tp.MemoryMiB == mem {
			t.Fatalf("a user's refused warm left template %s", tp.Key)
		}
	}

	r := remote(admin, "image", "warm", "minimal", "--memory", fmt.Sprint(mem), "--json")
	var tpl struct {
		Key       string `json:"key"`
		Image     string `json:"image"`
		CPUs      int    `json:"cpus"`
		MemoryMiB int    `json:"memory_mib"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &tpl) != nil || tpl.Key == "" || tpl.MemoryMiB != mem || !strings.HasPrefix(tpl.Image, "minimal@") {
		t.Fatalf("image warm as an admin over --host: %s", r)
	}
	for _, step := range []string{"template: boot", "template: agent", "template: save"} {
		if !strings.Contains(r.stderr, step) {
			t.Errorf("image warm's progress lacks %q:\n%s", step, r.stderr)
		}
	}
	t.Logf("template %s of %s (%d MiB) built over the API in %s", tpl.Key, tpl.Image, tpl.MemoryMiB, r.took)
	// On the daemon's host, where creates restore from it.
	found := false
	for _, tp := range templatesHere(t) {
		found = found || tp.Key == tpl.Key
	}
	if !found {
		t.Fatalf("template %s is not on the daemon's host", tpl.Key)
	}

	// Listed under its image version, to a user too, in JSON and text.
	r = remote(user, "image", "list", "--json")
	var ims []struct {
		Ref       string `json:"ref"`
		Templates []struct {
			Key       string `json:"key"`
			MemoryMiB int    `json:"memory_mib"`
		} `json:"templates"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &ims) != nil {
		t.Fatalf("image list as a user: %s", r)
	}
	listed := false
	for _, im := range ims {
		for _, tp := range im.Templates {
			if tp.Key == tpl.Key {
				listed = im.Ref == tpl.Image && tp.MemoryMiB == mem
			}
		}
	}
	if !listed {
		t.Errorf("image list --json does not show template %s under %s:\n%s", tpl.Key, tpl.Image, r.stdout)
	}
	if r = remote(user, "image", "list"); r.code != 0 || !strings.Contains(r.stdout, "warm templates:") || !strings.Contains(r.stdout, tpl.Key) {
		t.Errorf("image list (text) as a user:\n%s", r)
	}

	// Building it again finds it.
	if r = remote(admin, "image", "warm", "minimal", "--memory", fmt.Sprint(mem), "--json"); r.code != 0 || !strings.Contains(r.stdout, tpl.Key) || strings.Contains(r.stderr, "template: boot") {
		t.Errorf("image warm of an existing template: %s", r)
	}

	// A create of that shape restores from it.
	r = remote(admin, "create", "warmremote", "--os", "minimal", "--memory", fmt.Sprint(mem), "--json")
	defer minions(t, "", "destroy", "warmremote", "--yes")
	var v struct {
		vmJSON
		Boot string `json:"boot"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &v) != nil || v.Boot != "warm" {
		t.Fatalf("create of the template's shape over --host: %s", r)
	}
}

// templatesHere are the warm templates of the test installation.
func templatesHere(t *testing.T) []engine.Template {
	t.Helper()
	ts, err := engine.ReadTemplates(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	return ts
}
