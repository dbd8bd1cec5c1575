package vsockcli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/images"
	"github.com/minionsdev/minions/internal/testenv"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/hypervisor/qemu/relay"
)

// The real check: boot the agent in QEMU (microvm, TCG) from a hand-built
// initramfs and ext4 root, and drive it through relay.Run and Client. It
// needs an extracted Debian cloud kernel package:
//
//	MINIONS_TEST_KERNEL_DIR=/tmp/h1kern/x go test -run TestQEMU -v ./vsockcli/
//
// (apt-get download linux-image-<abi>-cloud-amd64 && dpkg-deb -x *.deb x),
// or a kernel directory as the images package keeps it, where the current
// kernel is installed on first use (scripts/test.sh sets one).

var qemuModules = []string{
	"drivers/virtio/virtio_ring", "drivers/virtio/virtio", "drivers/virtio/virtio_mmio",
	"drivers/virtio/virtio_pci_legacy_dev", "drivers/virtio/virtio_pci_modern_dev",
	"drivers/virtio/virtio_pci", "drivers/block/virtio_blk", "net/core/failover",
	"drivers/net/net_failover", "drivers/net/virtio_net", "drivers/char/virtio_console",
	"net/vmw_vsock/vsock", "net/vmw_vsock/vmw_vsock_virtio_transport_common",
	"net/vmw_vsock/vmw_vsock_virtio_transport",
}

func run(t *testing.T, dir string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

type qemuImages struct {
	kernel, initrd, rootfs string
}

func buildImages(t *testing.T, kdir, work string) qemuImages {
	t.Helper()
	kernels, _ := filepath.Glob(filepath.Join(kdir, "boot/vmlinuz-*"))
	mods, _ := filepath.Glob(filepath.Join(kdir, "lib/modules/*"))
	if len(kernels) == 0 && len(mods) == 0 {
		// Not an unpacked package: a kernel directory as images keeps it
		// (<dir>/<version>/{vmlinuz,modules}), installed on first use.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		k, err := images.EnsureKernel(ctx, kdir)
		cancel()
		if err != nil {
			t.Fatalf("kernel in %s: %v", kdir, err)
		}
		kernels, mods = []string{k.BzImage}, []string{k.ModulesDir}
	}
	if len(kernels) != 1 || len(mods) != 1 {
		t.Fatalf("no single kernel and module tree in %s", kdir)
	}
	agentBin := filepath.Join(work, "minions-agent")
	wd, _ := os.Getwd()
	run(t, filepath.Dir(wd), "go", "build", "-trimpath", "-ldflags=-s -w", "-o", agentBin, "./guestagent/cmd/minions-agent")

	ird := filepath.Join(work, "initrd.d")
	var list strings.Builder
	for _, m := range qemuModules {
		rel := "lib/modules/" + m + ".ko"
		os.MkdirAll(filepath.Dir(filepath.Join(ird, rel)), 0o755)
		data, err := os.ReadFile(filepath.Join(mods[0], "kernel", m+".ko"))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(ird, rel), data, 0o644)
		list.WriteString(rel + "\n")
	}
	os.MkdirAll(filepath.Join(ird, "etc/minions"), 0o755)
	os.WriteFile(filepath.Join(ird, "etc/minions/modules"), []byte(list.String()), 0o644)
	run(t, work, "cp", agentBin, filepath.Join(ird, "init"))
	initrd := filepath.Join(work, "initrd")
	run(t, ird, "sh", "-c", "find . | cpio -o -H newc --quiet > "+initrd)

	root := filepath.Join(work, "rootfs.d")
	for _, d := range []string{"bin", "sbin", "etc/minions", "proc", "sys", "dev", "run", "tmp", "root"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	run(t, work, "cp", "/bin/busybox", filepath.Join(root, "bin/busybox"))
	for _, a := range []string{"sh", "ls", "cat", "echo", "sleep", "uname", "stty", "id", "sync"} {
		os.Symlink("busybox", filepath.Join(root, "bin", a))
	}
	run(t, work, "cp", agentBin, filepath.Join(root, "sbin/init"))
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/minions/rc"), []byte("echo rc-ran > /run/rc-ran\n"), 0o644)
	rootfs := filepath.Join(work, "rootfs.ext4")
	run(t, work, "mkfs.ext4", "-q", "-d", root, rootfs, "64M")
	// The disk is bigger than the filesystem, as after a resize: growfs.
	run(t, work, "truncate", "-s", "128M", rootfs)
	return qemuImages{kernels[0], initrd, rootfs}
}

// console collects the guest console and timestamps marker lines.
type console struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	marks map[string][]time.Time
}

func (c *console) scan(r io.Reader) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		c.mu.Lock()
		c.buf.WriteString(line + "\n")
		if strings.Contains(line, "minions-agent: ready") {
			c.marks["ready"] = append(c.marks["ready"], time.Now())
		}
		c.mu.Unlock()
	}
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func TestQEMUAgent(t *testing.T) {
	kdir := os.Getenv("MINIONS_TEST_KERNEL_DIR")
	// scripts/test.sh sets it; CI has QEMU.
	testenv.NeedOrFail(t, kdir != "", "MINIONS_TEST_KERNEL_DIR not set")
	_, err := exec.LookPath("qemu-system-x86_64")
	testenv.NeedOrFail(t, err == nil, "no qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	work := t.TempDir()
	sockDir, err := os.MkdirTemp("/tmp", "h1q")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(sockDir)
	img := buildImages(t, kdir, work)

	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, _ := ssh.NewSignerFromKey(priv)
	khz := "0"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "cpu MHz"); ok {
				var mhz float64
				fmt.Sscanf(strings.TrimLeft(v, "\t :"), "%f", &mhz)
				khz = fmt.Sprint(int(mhz * 1000))
				break
			}
		}
	}
	// reboot=t: the kernel's default reboot path ends in a BIOS jump that
	// hangs on microvm; a triple fault makes QEMU reset the machine.
	cmdline := "console=ttyS0 root=/dev/vda rw quiet reboot=t tsc_early_khz=" + khz +
		" minions.name=h1vm minions.id=0123456789ab minions.hostkey=" +
		base64.StdEncoding.EncodeToString(signer.PublicKey().Marshal())
	serial := filepath.Join(sockDir, "serial.sock")
	con := &console{marks: map[string][]time.Time{}}
	var qemuDone chan error
	var qemu *exec.Cmd
	// launch starts QEMU as a driver would.
	launch := func() time.Time {
		qemu = exec.CommandContext(ctx, "unshare", "-n", "qemu-system-x86_64",
			"-M", "microvm", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
			"-nodefaults", "-no-user-config", "-nographic",
			"-kernel", img.kernel, "-initrd", img.initrd, "-append", cmdline,
			"-drive", "id=root,file="+img.rootfs+",format=raw,if=none",
			"-device", "virtio-blk-device,drive=root",
			"-device", "virtio-serial-device",
			"-chardev", "socket,id=agent,path="+serial+",server=on,wait=off",
			"-device", "virtserialport,chardev=agent,name=org.minions.agent",
			"-serial", "stdio")
		pr, pw := io.Pipe()
		qemu.Stdout, qemu.Stderr = pw, pw
		go con.scan(pr)
		at := time.Now()
		if err := qemu.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- qemu.Wait(); pw.Close() }()
		qemuDone = done
		return at
	}
	launched := launch()
	defer func() {
		qemu.Process.Kill()
		<-qemuDone
		if t.Failed() {
			t.Logf("console:\n%s", con)
		}
	}()

	listen := filepath.Join(sockDir, "agent.sock")
	var relayDone chan error
	startRelay := func() (stop func() error) {
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		relayDone = done
		go func() { done <- relay.Run(rctx, relay.Config{SerialSocket: serial, Listen: listen, Log: testLog(t)}) }()
		return func() error { rcancel(); return <-done }
	}
	stopRelay := startRelay()

	var pinned ssh.PublicKey
	cfg := Config{Signer: signer, HostKey: func(_ string, _ net.Addr, key ssh.PublicKey) error {
		if pinned == nil {
			pinned = key
		} else if !bytes.Equal(pinned.Marshal(), key.Marshal()) {
			return fmt.Errorf("host key changed")
		}
		return nil
	}, Timeout: 5 * time.Second}
	ep := hypervisor.AgentEndpoint{Kind: KindHybrid, Path: listen, Port: 1024}

	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	c, err := WaitReady(wctx, ep, cfg)
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	firstPing := time.Since(launched)
	ping, _ := c.Ping(ctx)
	con.mu.Lock()
	readyAt := con.marks["ready"]
	con.mu.Unlock()
	t.Logf("launch -> first ping %v; launch -> ready marker %v; guest uptime at ping %d ms",
		firstPing, readyAt[0].Sub(launched), ping.UptimeMS)
	for line := range strings.SplitSeq(con.String(), "\n") {
		if strings.Contains(line, "ready") {
			t.Logf("console: %s", line)
		}
	}

	// Round trips.
	var rtts []time.Duration
	for range 50 {
		s := time.Now()
		if _, err := c.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(s))
	}
	slices.Sort(rtts)
	t.Logf("ping round trip: median %v, p90 %v", rtts[len(rtts)/2], rtts[len(rtts)*9/10])
	var execs []time.Duration
	for range 5 {
		var out bytes.Buffer
		s := time.Now()
		code, err := c.Exec(ctx, ExecRequest{Command: "echo hi; exit 3", Stdout: &out})
		execs = append(execs, time.Since(s))
		if err != nil || code != 3 || out.String() != "hi\n" {
			t.Fatalf("exec = %d, %v, %q", code, err, out.String())
		}
	}
	slices.Sort(execs)
	t.Logf("exec round trip (new session + /bin/sh): median %v", execs[len(execs)/2])
	var out bytes.Buffer
	if code, err := c.Exec(ctx, ExecRequest{Command: "cat /run/rc-ran; cat; uname -n", Stdin: strings.NewReader("from-stdin\n"), Stdout: &out}); err != nil || code != 0 {
		t.Fatalf("exec = %d, %v", code, err)
	}
	if out.String() != "rc-ran\nfrom-stdin\nh1vm\n" {
		t.Fatalf("exec output %q", out.String())
	}
	big := bytes.Repeat([]byte{0, 1, 2, 255, '\n'}, 200_000)
	s := time.Now()
	if err := c.WriteFile(ctx, "/root/big", big, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := c.ReadFile(ctx, "/root/big")
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("sftp round trip of %d bytes: %v", len(big), err)
	}
	t.Logf("sftp write+read 1 MB: %v", time.Since(s))
	size, err := c.GrowFS(ctx)
	if err != nil || size < 100<<20 { // f_blocks excludes metadata: ~114 MiB of 128
		t.Fatalf("growfs: %d, %v", size, err)
	}
	t.Logf("growfs: root is now %d MiB", size>>20)
	frozen, err := c.FSFreeze(ctx)
	if err != nil || len(frozen) != 1 || frozen[0] != "/" {
		t.Fatalf("fsfreeze: %v, %v", frozen, err)
	}
	if err := c.FSThaw(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()

	// Relay restart: a new relay must redo the handshake with the guest.
	if err := stopRelay(); err != nil {
		t.Fatal(err)
	}
	stopRelay = startRelay()
	s = time.Now()
	c, err = WaitReady(ctx, ep, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("relay restart -> agent answers: %v", time.Since(s))

	// Guest reboot in place: QEMU keeps the chardev connection, the relay's
	// keepalive notices the old session is dead and redoes the handshake
	// with the rebooted guest.
	if err := c.Shutdown(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.Close()
	s = time.Now()
	deadline := time.Now().Add(120 * time.Second)
	for {
		wctx, wcancel := context.WithDeadline(ctx, deadline)
		c, err = WaitReady(wctx, ep, cfg)
		wcancel()
		if err != nil {
			t.Fatal(err)
		}
		if p2, err := c.Ping(ctx); err == nil && p2.BootID != ping.BootID {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("guest did not come back with a new boot id")
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case err := <-qemuDone:
		t.Fatalf("qemu exited on guest reboot: %v", err)
	default:
	}
	t.Logf("reboot -> agent answers with a new boot id: %v", time.Since(s))

	// Power off: QEMU exits and the relay returns by itself.
	if err := c.Shutdown(ctx, false); err != nil {
		t.Fatal(err)
	}
	s = time.Now()
	select {
	case err := <-qemuDone:
		qemuDone <- err
		t.Logf("poweroff -> qemu exit: %v (%v)", time.Since(s), err)
	case <-time.After(30 * time.Second):
		t.Fatal("qemu did not exit after poweroff")
	}
	// The relay notices QEMU is gone for good and returns by itself.
	s = time.Now()
	select {
	case err := <-relayDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		stopRelay()
		t.Fatal("relay still running 10 s after qemu exit")
	}
	t.Logf("qemu exit -> relay returned: %v", time.Since(s))
}
