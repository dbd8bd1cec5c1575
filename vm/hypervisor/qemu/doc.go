// Package qemu is the hypervisor.Driver for QEMU's microvm machine
// (qemu-system-x86_64 -M microvm), controlled over QMP.
//
// # Process model
//
// Start launches QEMU in its own session (setsid) with stdio redirected to
// RunDir/qemu.log, so the VM outlives the process that started it. The driver
// reaps the children it starts in a background goroutine: in a long-lived
// daemon that leaves no zombies, and when a short-lived CLI exits first, the
// VM is reparented to init (or the nearest subreaper), which reaps it. Every
// later call identifies processes by PID and start time (see package procfs),
// so a Handle loaded from JSON in another process works the same.
//
// # Jail
//
// With Config.Jail on (the default) QEMU and the relay are started jailed
// (package jail; jail.Config.Start builds the jail on a throw-away thread
// of the driver's process and forks them from it, with no launcher exec,
// unless clone3 into a v2 cgroup is refused): each VM's processes run as
// uid and gid
// Jail.UIDBase + Spec.VsockCID, in a mount namespace where Jail.Hide (the
// state and run dirs) is an empty tmpfs with only this VM's files bound
// back (run dir, console log and disks read-write; kernel, initramfs,
// read-only disks and the qcow2 backing chain read-only), and in the
// cgroup <Jail.CgroupParent>/[<Jail.Installation>/]<vm id> (memory max = guest memory +
// Jail.MemoryOverheadMiB, a CPU quota of its vCPUs, a pids limit). Start
// gives the uid its run dir (0700), console log and writable disks (0600)
// and opens what QEMU cannot open itself as that uid: the TAP (passed as
// -netdev tap,fd=3) and /dev/vhost-vsock (vhostfd=). Memory states travel
// through descriptors passed over QMP, as before. Kill and Shutdown remove
// the cgroup once its processes are gone (and the installation's group
// with its last VM); SweepCgroups removes those nothing ended. QEMU's -runas is not used: it
// cannot be combined with the sandbox's elevateprivileges=deny. TCG is not
// a security boundary (QEMU's policy, TCGWarning): the jail limits what an
// escape reaches, it does not make TCG safe for untrusted guests.
//
// # Agent channel
//
// Where /dev/vhost-vsock exists the guest gets a vhost-vsock-device and the
// agent is reached over AF_VSOCK (Handle.Agent.Kind "vsock"). Elsewhere the
// agent channel is a virtio-serial port named org.minions.agent backed by
// RunDir/agent.sock, and the driver starts Config.RelayCommand (the agent
// relay) with "--serial RunDir/agent.sock --listen RunDir/vsock.sock"; the
// relay offers Cloud Hypervisor's hybrid-vsock protocol on vsock.sock, so the
// agent is dialled the same way whatever the driver (Kind "hybrid-vsock",
// port AgentPort).
//
// # Console, reboot and power-off
//
// The serial console (ttyS0) is a unix socket server at RunDir/console.sock
// (one client at a time, for an interactive console) and is appended to
// Spec.ConsoleLog whether or not a client is attached; with
// Config.ConsoleCommand, QEMU writes it into RunDir/console.fifo instead and
// Spec.ConsoleLog is kept under Config.ConsoleMaxBytes (package
// consolelog). Where there is an agent relay, the relay does that too (one
// helper process per VM): the driver, as root, opens the FIFO read-write
// (so QEMU's open never waits and the relay never reads end of file), the
// log and its rotated file, and hands them to the jailed relay as
// descriptors 3-5 ("--console-fd 3"); the relay rotates by copy and
// truncation (consolelog.NewFileWriter), since it may not rename in the
// log's directory. A restarted relay (Repair) gets them again. With
// vhost-vsock there is no relay, and the console logger
// (Config.ConsoleCommand) runs as its own process, started before QEMU.
// QEMU runs with -no-reboot:
// a guest power-off, a guest reboot and a guest kernel panic (the guest
// kernel runs with panic=-1, so a panic is a reboot) all make QEMU exit,
// which callers see as Alive false / StateStopped. The console log's last
// kernel line tells which (consolelog.ClassifyExit); the caller decides
// whether to start the VM again (the service's restart policy).
//
// Under TCG the driver appends tsc_early_khz=<host TSC kHz> to the kernel
// command line: microvm has no fallback timer and otherwise hangs in early
// TSC calibration in a fraction of boots on a loaded host.
//
// # Files in RunDir
//
// qmp.sock, console.sock, agent.sock, vsock.sock, qemu.pid and machine.json
// (the resolved launch configuration, used by SaveState) are created by
// Start and removed by Shutdown and Kill; qemu.log and relay.log are kept for
// diagnosis. Disks are never touched. qemu.log ends with how QEMU ended
// ("minions: pid N signal: killed at <time>") when this process started
// it. A Kill after QEMU exited on its own (a crash, a guest panic or
// reboot) copies qemu.log and the end of the console next to the console
// log as qemu.log.crashed-<time> and console.log.crashed-<time> (the
// newest three of each are kept), since the caller removes the run dir.
package qemu
