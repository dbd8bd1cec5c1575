package hostcmd

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/vm/jail"
)

// jailChecks are doctor's lines about the VM jail: the per-VM uid, the
// mount namespace (proved by running /bin/true through the real launcher
// as an unprivileged uid with the state dir hidden), and the cgroups.
func jailChecks(j jail.Config, paths local.Paths) []check {
	exe, _ := os.Executable()
	cfg := local.VMJail(exe, j, paths).WithDefaults()
	var out []check
	add := func(what string, ok bool, format string, args ...any) {
		out = append(out, check{What: what, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	if !cfg.On() {
		add("vm jail", false, "off in the config: QEMU and the agent relay run as root, unconfined")
		return out
	}
	add("per-vm uid", true, "QEMU and the agent relay run as uid = gid = %d + the VM's vsock CID, no supplementary groups (but /dev/kvm's under KVM)", cfg.UIDBase)
	if os.Geteuid() != 0 {
		add("mount namespace", false, "run as root to check")
	} else if err := probeJail(cfg); err != nil {
		add("mount namespace", false, "the jail launcher failed: %v", err)
	} else if err := probeJailStart(cfg); err != nil {
		add("mount namespace", false, "the in-process jail (how the QEMU driver starts VMs) failed: %v", err)
	} else {
		add("mount namespace", true, "each VM sees %s only through its own files (empty tmpfs over them, its files bound back)", strings.Join(cfg.Hide, " and "))
	}
	info, err := jail.Cgroups()
	switch {
	case err != nil:
		add("cgroups", false, "%v", err)
	case len(info.Missing()) > 0:
		add("cgroups", false, "%s, %s: controllers missing: %s", info.Version, info.Detail, strings.Join(info.Missing(), ", "))
	default:
		l, _ := cfg.Limits(1, 256)
		add("cgroups", true, "%s, %s: %s; per VM %s/<id>: memory max = guest + %d MiB, cpu quota = vCPUs, pids max %d (1 vCPU, 256 MiB: %s)",
			info.Version, info.Detail, strings.Join(info.Controllers, ", "), cfg.CgroupParent, cfg.MemoryOverheadMiB, cfg.PidsMax, l)
	}
	return out
}

// probeJail runs /bin/true through the launcher in a jail hiding the
// state and run dirs, as the first per-VM uid (no VM has index 0).
func probeJail(cfg jail.Config) error {
	p, err := cfg.Plan(jail.Request{UID: int(cfg.UIDBase), Dir: "/", Argv: []string{"/bin/true"}})
	if err != nil {
		return err
	}
	cmd, err := cfg.Cmd(p)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	return waitProbe(cmd, &buf, cmd.Start())
}

// waitProbe waits (at most 10 s) for a probe that start started, and
// returns its failure with what it wrote.
func waitProbe(cmd *exec.Cmd, out *bytes.Buffer, start error) error {
	if start != nil {
		return start
	}
	t := time.AfterFunc(10*time.Second, func() { cmd.Process.Kill() })
	defer t.Stop()
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// probeJailStart runs /bin/true jailed as probeJail does, but the way the
// QEMU driver starts QEMU and the relay: jail.Config.Start, from a
// thread of this process, with no launcher exec.
func probeJailStart(cfg jail.Config) error {
	p, err := cfg.Plan(jail.Request{UID: int(cfg.UIDBase), Dir: "/", Argv: []string{"/bin/true"}})
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	cmd := &exec.Cmd{Stdout: &buf, Stderr: &buf}
	return waitProbe(cmd, &buf, cfg.Start(p, cmd, cmd.Start))
}
