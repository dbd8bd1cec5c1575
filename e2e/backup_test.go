package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// minionsAt runs the CLI against another installation (state dir).
func minionsAt(t *testing.T, state string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	noteTestInstallation(t, state)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "minions"), args...)
	cmd.Env = append(os.Environ(), "MINIONS_STATE_DIR="+state, "MINIONS_AGENT_BIN="+filepath.Join(binDir, "minions-agent"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start)}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("minions %v: %v", args, err)
	}
	return r
}

func mustAt(t *testing.T, state string, v any, args ...string) string {
	t.Helper()
	r := minionsAt(t, state, args...)
	if r.code != 0 {
		t.Fatalf("minions (state %s) %s: %s", state, strings.Join(args, " "), r)
	}
	if v != nil {
		if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
			t.Fatalf("minions %v: decode %q: %v", args, r.stdout, err)
		}
	}
	return r.stdout
}

// TestBackupRestore backs up a running VM with a file written in it, with
// and without disks, and restores each into a fresh state dir on this host
// (the original VM destroyed first: its IP, TAP and CID would clash, as
// they never do on a really fresh host).
func TestBackupRestore(t *testing.T) {
	setup(t)
	// Not t.TempDir() (0700): the restored installations' jailed VM
	// processes must traverse every parent of their state dirs.
	dir, err := os.MkdirTemp("", "mnbackup")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var v vmJSON
	mustJSON(t, &v, "create", "bk1", "--cpus", "1", "--memory", "256")
	destroyed := false
	defer func() {
		if !destroyed {
			minions(t, "", "destroy", "bk1", "--yes")
		}
	}()
	must(t, "exec", "bk1", "--", "sh", "-c", "echo hello-backup > /bk-marker")
	// A disk snapshot travels too: it holds the marker but not what came
	// after it.
	must(t, "snapshot", "create", "bk1", "--name", "s1")
	must(t, "exec", "bk1", "--", "sh", "-c", "echo post-snapshot > /bk-post-snap")

	withDisks := filepath.Join(dir, "full.tar.gz")
	var made struct {
		WithDisks bool `json:"with_disks"`
		VMs       []struct {
			Name   string `json:"name"`
			Disk   bool   `json:"disk"`
			Frozen bool   `json:"frozen"`
		} `json:"vms"`
		Seconds float64 `json:"seconds"`
	}
	mustJSON(t, &made, "backup", "create", withDisks, "--with-disks")
	if !made.WithDisks || len(made.VMs) != 1 || !made.VMs[0].Disk || !made.VMs[0].Frozen {
		t.Fatalf("backup with disks: %+v", made)
	}
	noDisks := filepath.Join(dir, "meta.tar")
	must(t, "backup", "create", noDisks)
	for _, f := range []string{withDisks, noDisks} {
		st, _ := os.Stat(f)
		t.Logf("%s: %d KiB", filepath.Base(f), st.Size()>>10)
	}
	t.Logf("backup with disks of a running vm: %.1fs", made.Seconds)

	// The VM ran on through both backups, thawed.
	var after vmJSON
	mustJSON(t, &after, "show", "bk1")
	if after.Status != "running" || after.PID != v.PID {
		t.Fatalf("after backup: %+v (before %+v)", after, v)
	}
	must(t, "exec", "bk1", "--", "sh", "-c", "echo thawed > /bk-after")

	must(t, "destroy", "bk1", "--yes")
	destroyed = true

	t.Run("with-disks", func(t *testing.T) {
		s2 := filepath.Join(dir, "s2")
		var res struct {
			VMs         []string `json:"vms"`
			DiskMissing []string `json:"disk_missing"`
			Users       int      `json:"users"`
		}
		mustAt(t, s2, &res, "backup", "restore", withDisks, "--json", "--config", filepath.Join(dir, "s2.toml"))
		if len(res.VMs) != 1 || len(res.DiskMissing) != 0 || res.Users < 1 {
			t.Fatalf("restore: %+v", res)
		}
		var got vmJSON
		mustAt(t, s2, &got, "show", "bk1", "--json")
		if got.ID != v.ID || got.IP != v.IP || got.Status != "stopped" {
			t.Fatalf("restored vm %+v, was %+v", got, v)
		}
		mustAt(t, s2, nil, "init")
		defer minionsAt(t, s2, "destroy", "bk1", "--yes")
		mustAt(t, s2, nil, "start", "bk1")
		out := mustAt(t, s2, nil, "exec", "bk1", "--", "cat", "/bk-marker")
		if strings.TrimSpace(out) != "hello-backup" {
			t.Fatalf("marker in restored vm = %q", out)
		}
		if out := mustAt(t, s2, nil, "exec", "bk1", "--", "cat", "/bk-post-snap"); strings.TrimSpace(out) != "post-snapshot" {
			t.Fatalf("post-snapshot file in restored vm = %q", out)
		}
		if r := minionsAt(t, s2, "exec", "bk1", "--", "cat", "/bk-after"); r.code == 0 {
			t.Fatalf("a file written after the backup is in the restore: %s", r)
		}
		// The snapshot came along, pointed at this state dir's base image.
		mustAt(t, s2, nil, "snapshot", "restore", "bk1", "s1", "--yes")
		if r := minionsAt(t, s2, "exec", "bk1", "--", "cat", "/bk-post-snap"); r.code == 0 {
			t.Fatalf("after restoring snapshot s1 the later file is still there: %s", r)
		}
		if out := mustAt(t, s2, nil, "exec", "bk1", "--", "cat", "/bk-marker"); strings.TrimSpace(out) != "hello-backup" {
			t.Fatalf("marker after snapshot restore = %q", out)
		}
		// Restoring again onto an installation with VMs is refused.
		if r := minionsAt(t, s2, "backup", "restore", withDisks); r.code == 0 || !strings.Contains(r.stderr, "already has a store with 1 vms") {
			t.Fatalf("second restore: %s", r)
		}
	})

	t.Run("without-disks", func(t *testing.T) {
		s3 := filepath.Join(dir, "s3")
		var res struct {
			DiskMissing []string `json:"disk_missing"`
		}
		mustAt(t, s3, &res, "backup", "restore", noDisks, "--json", "--config", filepath.Join(dir, "s3.toml"))
		if len(res.DiskMissing) != 1 || res.DiskMissing[0] != "bk1" {
			t.Fatalf("restore: %+v", res)
		}
		var got struct {
			vmJSON
			Note string `json:"note"`
		}
		mustAt(t, s3, &got, "show", "bk1", "--json")
		if got.Status != "error" || got.Note != "disk missing: restored without disks" {
			t.Fatalf("restored vm without disk: %+v", got)
		}
		if out := mustAt(t, s3, nil, "list"); !strings.Contains(out, "disk missing") {
			t.Fatalf("list does not say the disk is missing:\n%s", out)
		}
		r := minionsAt(t, s3, "start", "bk1")
		if r.code == 0 || !strings.Contains(r.stderr, "cannot start: disk missing: restored without disks") {
			t.Fatalf("start without disk: %s", r)
		}
		if _, err := os.Stat(filepath.Join(s3, "vms", got.ID, "disk.qcow2")); !os.IsNotExist(err) {
			t.Fatalf("start made a disk: %v", err)
		}
		mustAt(t, s3, nil, "destroy", "bk1", "--yes")
	})
}
