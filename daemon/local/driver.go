package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/cloudhypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/kvm"
	"github.com/minionsdev/minions/vm/hypervisor/qemu"
	"github.com/minionsdev/minions/vm/jail"
)

// probeKVM runs the KVM probe once per host boot and caches its result in
// the run directory (the probe takes tens of milliseconds; every CLI
// invocation opens a driver).
func probeKVM(ctx context.Context, runDir string) kvm.Result {
	bootID, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	cache := filepath.Join(runDir, "kvm-probe.json")
	var cached struct {
		BootID string     `json:"boot_id"`
		Result kvm.Result `json:"result"`
	}
	if b, err := os.ReadFile(cache); err == nil && json.Unmarshal(b, &cached) == nil && cached.BootID == strings.TrimSpace(string(bootID)) {
		return cached.Result
	}
	res := kvm.Probe(ctx, kvm.Options{})
	cached.BootID, cached.Result = strings.TrimSpace(string(bootID)), res
	if b, err := json.Marshal(cached); err == nil {
		os.WriteFile(cache+".tmp", b, 0o600)
		os.Rename(cache+".tmp", cache)
	}
	return res
}

// ChooseDriver picks the hypervisor: Cloud Hypervisor where its binary is
// present and KVM really works, else QEMU with KVM, else QEMU with TCG.
// override ("auto", "qemu", "qemu-kvm", "qemu-tcg", "cloud-hypervisor")
// forces one; a forced choice the host cannot run is an error.
func ChooseDriver(ctx context.Context, override, runDir string) (kvm.Choice, kvm.Result, error) {
	ch, _ := exec.LookPath("cloud-hypervisor")
	qm, _ := exec.LookPath("qemu-system-x86_64")
	res := probeKVM(ctx, runDir)
	choice, err := kvm.Select(kvm.SelectInput{Override: override, CHBinary: ch, QEMUBinary: qm, KVM: res})
	return choice, res, err
}

func newDriver(ctx context.Context, o Options) (hypervisor.Driver, error) {
	choice, res, err := ChooseDriver(ctx, o.Hypervisor, o.Paths.Run)
	if err != nil {
		return nil, err
	}
	if choice.Driver == kvm.DriverCloudHypervisor {
		return cloudhypervisor.New(cloudhypervisor.Config{Log: o.Log})
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	accel := qemu.AccelTCG
	if choice.Accel == kvm.AccelKVM {
		accel = qemu.AccelKVM
	}
	cfg := qemu.Config{
		Accel: accel, KVMUsable: res.Usable, Sandbox: o.Sandbox, ConsoleMaxBytes: o.Resources.ConsoleLogMaxBytes,
		ProbeSandbox: cachedSandboxProbe(o.Paths.Run, qemu.ProbeSandbox),
		Jail:         VMJail(exe, o.Jail, o.Paths),
		MemoryDir:    MemoryDir(o.Paths.State),
		MemoryOwner:  o.Paths.State,
		Log:          o.Log,
	}
	// Without minions-relay installed, commands that start no VM still
	// work: the bare name is looked up in $PATH when a VM starts, and
	// fails there (`minions doctor` says where it was looked for).
	relayBin, err := RelayBinary()
	if err != nil {
		relayBin = "minions-relay"
	}
	cfg.RelayCommand = []string{relayBin, "agent-relay"}
	cfg.ConsoleCommand = []string{relayBin, "console-log"}
	return qemu.New(cfg)
}

// RelayBinary finds minions-relay, the QEMU driver's per-VM helper (agent
// relay and console logger, a separate small binary so that each VM pays
// about 2 MiB for it instead of the whole minions binary's 6.4): in
// $MINIONS_RELAY_BIN, beside this executable, in ../lib/minions from it,
// then in /usr/local/lib/minions.
func RelayBinary() (string, error) {
	p, tried := findHelper("minions-relay", "MINIONS_RELAY_BIN")
	if p == "" {
		return "", errs.New(errs.FailedPrecondition, "agent relay binary not found (looked at %v): build it with `make` or set MINIONS_RELAY_BIN", tried)
	}
	return p, nil
}

// findHelper looks for the helper binary name where Minions installs its
// helpers: $env, beside this executable, in ../lib/minions from it (where
// install.sh and `make install` put them for any prefix), then in
// /usr/local/lib/minions. It returns the first regular file, or "" and
// the paths it tried.
func findHelper(name, env string) (string, []string) {
	var tried []string
	if p := os.Getenv(env); p != "" {
		tried = append(tried, p)
	}
	if exe, err := os.Executable(); err == nil {
		tried = append(tried, filepath.Join(filepath.Dir(exe), name),
			filepath.Join(filepath.Dir(filepath.Dir(exe)), "lib", "minions", name))
	}
	tried = append(tried, filepath.Join("/usr/local/lib/minions", name))
	for _, p := range tried {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, tried
		}
	}
	return "", tried
}

// VMJail is the jail of this installation's VMs: the launcher is
// minions-relay where it is installed (RelayBinary: a small binary, so
// the launch before each QEMU and relay costs a few milliseconds, not the
// start of the whole minions binary), else the minions executable exe;
// the state dir (store, keys, images, every VM's disks) and the run dir
// are hidden from each VM but for its own files. Its VMs' cgroups are
// <parent>/<installationID(state)>/<vm id>.
func VMJail(exe string, j jail.Config, paths Paths) jail.Config {
	launcher := exe
	if p, err := RelayBinary(); err == nil {
		launcher = p
	}
	j.Command = []string{launcher, "jail-exec"}
	j.Hide = []string{paths.State, paths.Run}
	if j.Installation == "" {
		// Its VMs' cgroups sit in a group of its own, which Reconcile
		// sweeps (qemu.Driver.SweepCgroups): minions/<installation>/<vm id>.
		j.Installation = installationID(paths.State)
	}
	return j
}

// installationID names an installation on this machine by its state
// directory: its RAM file dir (MemoryDir) and its VMs' cgroup group
// (jail.Config.Installation).
func installationID(stateDir string) string {
	if abs, err := filepath.Abs(stateDir); err == nil {
		stateDir = abs
	}
	sum := sha256.Sum256([]byte(stateDir))
	return hex.EncodeToString(sum[:6])
}

// MemoryDir is the tmpfs directory where an installation's VMs keep their
// RAM files (qemu.Config.MemoryDir): one per installation, named by its
// state directory. A VM keeps its ID when it moves, and several
// installations (a control plane and its nodes in network namespaces of
// one test machine) can share the machine's /dev/shm: a shared directory
// would give a moving VM's source and target the same file.
func MemoryDir(stateDir string) string {
	return filepath.Join("/dev/shm/minions", installationID(stateDir))
}
