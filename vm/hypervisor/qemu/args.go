package qemu

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/minionsdev/minions/vm/hypervisor"
)

// AgentPort is the port the agent is dialled on (hybrid-vsock or vsock).
const AgentPort = 1024

// AgentPortName is the virtio-serial port name of the agent channel.
const AgentPortName = "org.minions.agent"

// Names of the files the driver keeps in Spec.RunDir.
const (
	qmpSock     = "qmp.sock"
	consoleSock = "console.sock"
	agentSock   = "agent.sock"
	vsockSock   = "vsock.sock"
	pidFile     = "qemu.pid"
	machineFile = "machine.json"
	qemuLog     = "qemu.log"
	relayLog    = "relay.log"
	consoleFIFO = "console.fifo" // see console.go
)

// jailTBSizeMiB is the TCG translation cache of a jailed QEMU, well inside
// the jail's default memory overhead (256 MiB).
const jailTBSizeMiB = 128

// runFiles are removed by Shutdown, Kill and a failed Start.
var runFiles = []string{qmpSock, consoleSock, agentSock, vsockSock, pidFile, machineFile, consoleFIFO, liveNBDSock, liveMigSock}

// machine is the resolved launch configuration of one QEMU process. It is
// pure data: argv is a function of it alone. It is written to
// RunDir/machine.json and, by SaveState, into the state directory.
type machine struct {
	ID         string               `json:"id"`
	Name       string               `json:"name"`
	Accel      string               `json:"accel"`
	CPUs       int                  `json:"cpus"`
	MemoryMiB  int                  `json:"memory_mib"`
	Kernel     string               `json:"kernel"`
	Initramfs  string               `json:"initramfs,omitempty"`
	Cmdline    string               `json:"cmdline"` // final, with tsc_early_khz when added
	Disks      []hypervisor.Disk    `json:"disks,omitempty"`
	Net        *hypervisor.NetIface `json:"net,omitempty"`
	VhostVsock bool                 `json:"vhost_vsock"`
	VsockCID   uint32               `json:"vsock_cid,omitempty"`
	RunDir     string               `json:"run_dir"`
	ConsoleLog string               `json:"console_log"`
	// ConsoleFIFO, when set, is where QEMU writes the console instead of
	// ConsoleLog: the console logger copies it into the capped log.
	ConsoleFIFO string `json:"console_fifo,omitempty"`
	// Incoming is the memory state file to restore from ("" for a boot).
	Incoming string `json:"incoming,omitempty"`
	// LiveIncoming starts the VM paused, waiting for a live migration
	// (migrate.go).
	LiveIncoming bool `json:"live_incoming,omitempty"`
	// Sandbox runs QEMU under its seccomp sandbox (SandboxArgs).
	Sandbox bool `json:"sandbox,omitempty"`
	// MemFile, when set, is the file the guest RAM lives in (warm
	// templates, template.go): mapped shared by a template, privately
	// (copy-on-write) by its clones.
	MemFile   string `json:"mem_file,omitempty"`
	MemShared bool   `json:"mem_shared,omitempty"`
	// MemBackendRAM gives a VM restored from a snapshot of a clone the
	// clone's RAM block name on anonymous memory (template.go).
	MemBackendRAM bool `json:"mem_backend_ram,omitempty"`
	// MemOwn: MemFile is this VM's own RAM file in Config.MemoryDir,
	// mapped shared, removed with the VM (fork.go).
	MemOwn bool `json:"mem_own,omitempty"`
	// MemFD, when set, is the descriptor at which a jailed clone's QEMU
	// inherits a sealed memfd holding its template's RAM (MemFile), and
	// opens as /proc/self/fd/MemFD instead of the template's file
	// (template_memfd_linux.go). MemMap is how /proc/PID/maps names it.
	MemFD  int    `json:"mem_fd,omitempty"`
	MemMap string `json:"mem_map,omitempty"`
	// PlainIncoming: the Incoming stream was saved without x-ignore-shared
	// (it carries all RAM) although the VM has a memory backend object.
	PlainIncoming bool `json:"plain_incoming,omitempty"`
	// RAMPadKiB is added to MemoryMiB for the guest RAM (ramsize.go).
	RAMPadKiB int `json:"ram_pad_kib,omitempty"`
	// memReady: the MemOwn file exists already, made under the memory
	// dir's lock (makeRAMFile) or a fork's copy holding the RAM, for
	// launch to use and to remove on failure; launch makes none itself.
	memReady bool
	// deferIncoming: start waiting for Incoming, which FinishCopy loads
	// later (a fork's copy started early, fork_early.go).
	deferIncoming bool
	// UID and Cgroup are the jail of QEMU and the relay (0, "": none).
	UID    int    `json:"uid,omitempty"`
	Cgroup string `json:"cgroup,omitempty"`
	// TapFD and VhostFD are the descriptors QEMU inherits its TAP and
	// /dev/vhost-vsock at when jailed (it cannot open them itself); 0:
	// QEMU opens them by name.
	TapFD   int `json:"tap_fd,omitempty"`
	VhostFD int `json:"vhost_fd,omitempty"`
}

func (m machine) path(name string) string { return filepath.Join(m.RunDir, name) }

// consoleOut is the file QEMU writes the serial console to.
func (m machine) consoleOut() string {
	if m.ConsoleFIFO != "" {
		return m.ConsoleFIFO
	}
	return m.ConsoleLog
}

// opt escapes a value for QEMU's comma-separated option syntax.
func opt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// withTSC appends tsc_early_khz=khz to cmdline unless it is already set.
func withTSC(cmdline string, khz int) string {
	if khz <= 0 {
		return cmdline
	}
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, "tsc_early_khz=") {
			return cmdline
		}
	}
	return strings.TrimSpace(cmdline + " tsc_early_khz=" + strconv.Itoa(khz))
}

// args renders the QEMU argv (without the binary).
func (m machine) args() []string {
	name := m.Name
	if name == "" {
		name = m.ID
	}
	a := []string{
		"-name", "guest=" + opt(name) + ",process=minions-" + opt(m.ID),
		"-M", "microvm" + m.memoryBackendOption(),
	}
	if m.Accel == AccelKVM {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		accel := "tcg"
		if m.Cgroup != "" {
			// Bound the translation cache (QEMU's default reserves up
			// to 1 GiB) so the cgroup's memory overhead covers it.
			accel += ",tb-size=" + strconv.Itoa(jailTBSizeMiB)
		}
		a = append(a, "-accel", accel, "-cpu", "max")
	}
	a = append(a,
		"-m", m.ramSize(),
	)
	a = append(a, m.memoryBackendArgs()...)
	a = append(a,
		"-smp", strconv.Itoa(m.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none",
		// A guest reboot (and a panic: the kernel runs with panic=-1)
		// ends QEMU; the supervisor reads why from the console log.
		"-no-reboot",
		"-kernel", m.Kernel,
	)
	if m.Initramfs != "" {
		a = append(a, "-initrd", m.Initramfs)
	}
	a = append(a, "-append", m.Cmdline)
	a = append(a,
		"-chardev", "socket,id=con,path="+opt(m.path(consoleSock))+",server=on,wait=off,logfile="+opt(m.consoleOut())+",logappend=on",
		"-serial", "chardev:con",
		"-qmp", "unix:"+opt(m.path(qmpSock))+",server=on,wait=off",
		"-pidfile", m.path(pidFile),
	)
	for i, d := range m.Disks {
		drive := fmt.Sprintf("if=none,id=disk%d,file=%s,format=%s", i, opt(d.Path), d.Format)
		if d.ReadOnly {
			drive += ",readonly=on"
		}
		a = append(a, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=disk%d", i))
	}
	if m.Net != nil {
		netdev := "tap,id=net0,ifname=" + opt(m.Net.TAP) + ",script=no,downscript=no,vhost=off"
		if m.TapFD > 0 {
			netdev = "tap,id=net0,fd=" + strconv.Itoa(m.TapFD) + ",vhost=off"
		}
		a = append(a,
			"-netdev", netdev,
			"-device", "virtio-net-device,netdev=net0,mac="+m.Net.MAC,
		)
	}
	if m.VhostVsock {
		dev := "vhost-vsock-device,guest-cid=" + strconv.FormatUint(uint64(m.VsockCID), 10)
		if m.VhostFD > 0 {
			dev += ",vhostfd=" + strconv.Itoa(m.VhostFD)
		}
		a = append(a, "-device", dev)
	} else {
		a = append(a,
			"-device", "virtio-serial-device",
			"-chardev", "socket,id=agent,path="+opt(m.path(agentSock))+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name="+AgentPortName+m.agentPortID(),
		)
	}
	if m.Incoming != "" || m.LiveIncoming {
		// The state arrives over QMP (migrate-incoming on a passed
		// descriptor or a socket) once QEMU is up: see finishIncoming
		// and migrate.go.
		a = append(a, "-incoming", "defer")
	}
	if m.LiveIncoming {
		// Paused after the migration until the disk mirror has ended.
		a = append(a, "-S")
	}
	if m.Sandbox {
		a = append(a, "-sandbox", SandboxArgs)
	}
	return a
}
