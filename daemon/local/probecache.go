package local

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// sandboxProbeFile keeps the QEMU sandbox verdict in the run dir.
const sandboxProbeFile = "sandbox-probe.json"

// sandboxVerdict is what sandboxProbeFile holds: the verdict for one QEMU
// binary (its path and identity) in one host boot.
type sandboxVerdict struct {
	BootID string `json:"boot_id"`
	Binary string `json:"binary"`
	Ident  string `json:"ident"` // device, inode, size, mtime, ctime
	Err    string `json:"err,omitempty"`
}

// cachedSandboxProbe wraps probe (qemu.ProbeSandbox: it runs QEMU, tens of
// milliseconds, on every CLI command that starts a VM) with a verdict kept
// in runDir per host boot and binary identity: replacing the binary (an
// upgrade) changes its inode, size or times and probes again. A binary
// that cannot be found or stat'ed is probed every time (probe reports it).
func cachedSandboxProbe(runDir string, probe func(context.Context, string) error) func(context.Context, string) error {
	return func(ctx context.Context, binary string) error {
		path, ident := binaryIdent(binary)
		if ident == "" {
			return probe(ctx, binary)
		}
		bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
		want := sandboxVerdict{BootID: strings.TrimSpace(string(bootID)), Binary: path, Ident: ident}
		cache := filepath.Join(runDir, sandboxProbeFile)
		var got sandboxVerdict
		if b, err := os.ReadFile(cache); err == nil && json.Unmarshal(b, &got) == nil &&
			got.BootID == want.BootID && got.Binary == want.Binary && got.Ident == want.Ident {
			if got.Err != "" {
				return errors.New(got.Err)
			}
			return nil
		}
		err := probe(ctx, binary)
		if ctx.Err() != nil {
			return err // cut short: no verdict
		}
		if err != nil {
			want.Err = err.Error()
		}
		if b, merr := json.Marshal(want); merr == nil {
			tmp := cache + ".tmp"
			if os.WriteFile(tmp, b, 0o600) == nil {
				os.Rename(tmp, cache)
			}
		}
		return err
	}
}

// binaryIdent resolves binary as exec does and returns its absolute path
// and identity, or "" when it cannot.
func binaryIdent(binary string) (string, string) {
	path, err := exec.LookPath(binary)
	if err != nil {
		return "", ""
	}
	if path, err = filepath.Abs(path); err != nil {
		return "", ""
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", ""
	}
	b, _ := json.Marshal([]int64{int64(st.Dev), int64(st.Ino), st.Size, st.Mtim.Nano(), st.Ctim.Nano()})
	return path, string(b)
}
