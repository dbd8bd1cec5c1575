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
// as an unprivileged uid with the state dir hidden), the cgroups, and
// (as root, with the controllers there) how a VM's processes join their
// cgroup (cgroupJoinCheck).
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
	switch mode, merr := jail.CgroupJoinMode(); {
	case err == nil && len(info.Missing()) == 0 && os.Geteuid() == 0:
		out = append(out, cgroupJoinCheck(cfg))
	case merr != nil:
		add("cgroup join", false, "%v", merr)
	case os.Geteuid() != 0:
		add("cgroup join", false, "%s: %s; run as root to check", mode, joinText[mode])
	default:
		add("cgroup join", false, "%s: %s; not probed: the cgroups are not usable", mode, joinText[mode])
	}
	return out
}

// joinText says what each of jail's cgroup join modes means.
var joinText = map[string]string{
	jail.JoinV1Tasks:    "the thread that forks QEMU or the relay joins the VM's cgroup (tasks), so the process is born in it",
	jail.JoinV2Clone:    "QEMU and the relay are cloned into the VM's cgroup (clone3 CLONE_INTO_CGROUP)",
	jail.JoinV2Launcher: "QEMU and the relay start through the jail-exec launcher, which joins the VM's cgroup before exec (an exec more per process)",
}

// cgroupJoinCheck is doctor's line on how the in-process jail puts a
// VM's processes in its cgroup (jail.CgroupJoinMode), proved by starting
// a probe in a cgroup of its own, removed after.
func cgroupJoinCheck(cfg jail.Config) check {
	c := check{What: "cgroup join"}
	name, err := probeCgroupJoin(cfg)
	mode, merr := jail.CgroupJoinMode()
	switch {
	case merr != nil:
		c.Detail = merr.Error()
	case err != nil:
		c.Detail = fmt.Sprintf("%s: a probe started in its own cgroup failed: %v", mode, err)
	default:
		c.OK = true
		c.Detail = fmt.Sprintf("%s: %s; a probe was started in %s", mode, joinText[mode], name)
		if mode == jail.JoinV2Launcher {
			c.Detail += fmt.Sprintf(" (%v)", jail.CloneIntoCgroupRefused())
		}
	}
	return c
}

// probeCgroupJoin starts cat /proc/self/cgroup jailed as the QEMU
// driver starts its processes (jail.Config.Start) in a cgroup made for
// it, checks that it ran in that cgroup, and removes the cgroup (and the
// installation's group, if that is left empty). It returns the cgroup's
// name.
func probeCgroupJoin(cfg jail.Config) (string, error) {
	name, err := cfg.Cgroup(fmt.Sprintf("doctor-%d", os.Getpid()))
	if err != nil {
		return "", err
	}
	l, err := cfg.Limits(1, 64)
	if err != nil {
		return "", err
	}
	if err := jail.CreateCgroup(name, l); err != nil {
		return "", err
	}
	defer func() {
		jail.DeleteCgroup(name)
		if g := cfg.InstallationCgroup(); g != "" {
			jail.PruneCgroup(g)
		}
	}()
	p, err := cfg.Plan(jail.Request{UID: int(cfg.UIDBase), Cgroup: name, Dir: "/", Argv: []string{"/bin/cat", "/proc/self/cgroup"}})
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	cmd := &exec.Cmd{Stdout: &buf, Stderr: &buf}
	if err := waitProbe(cmd, &buf, cfg.Start(p, cmd, cmd.Start)); err != nil {
		return "", err
	}
	if !strings.Contains(buf.String(), ":/"+name+"\n") {
		return "", fmt.Errorf("it ran outside %s: %s", name, strings.TrimSpace(buf.String()))
	}
	return name, nil
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
