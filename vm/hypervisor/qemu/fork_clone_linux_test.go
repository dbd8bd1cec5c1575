package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/minionsdev/minions/vm/disk"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
)

func TestParseMapsLine(t *testing.T) {
	const file = "/var/lib/minions/templates/x/memory.ram"
	for _, c := range []struct {
		line string
		want mapping
		ok   bool
	}{
		{"7f0000000000-7f0010000000 rw-p 00000000 fd:01 1234 " + file, mapping{0x7f0000000000, 0x7f0010000000, 0}, true},
		{"7f0010000000-7f0020000000 rw-p 10000000 fd:01 1234 " + file + " (deleted)", mapping{0x7f0010000000, 0x7f0020000000, 0x10000000}, true},
		{"7f0000000000-7f0010000000 rw-s 00000000 fd:01 1234 " + file, mapping{}, false}, // shared
		{"7f0000000000-7f0010000000 rw-p 00000000 fd:01 1234 " + file + "x", mapping{}, false},
		{"7f0000000000-7f0010000000 rw-p 00000000 00:00 0 ", mapping{}, false},
		{"garbage", mapping{}, false},
	} {
		got, ok := parseMapsLine(c.line, file)
		if ok != c.ok || got != c.want {
			t.Errorf("parseMapsLine(%q) = %+v, %v; want %+v, %v", c.line, got, ok, c.want, c.ok)
		}
	}
}

func TestWrittenPage(t *testing.T) {
	for _, c := range []struct {
		e    uint64
		want bool
	}{
		{0, false},                  // never touched: the template's
		{pmPresent | pmFile, false}, // the template's page, mapped
		{pmPresent | 42, true},      // anonymous: written
		{pmSwap | 7, true},          // written, swapped out
		{pmPresent | pmFile | 9, false},
	} {
		if got := written(c.e); got != c.want {
			t.Errorf("written(%#x) = %v, want %v", c.e, got, c.want)
		}
	}
}

func TestWithConfiguration(t *testing.T) {
	dev := binary.BigEndian.AppendUint32(nil, vmFileMagic)
	dev = binary.BigEndian.AppendUint32(dev, vmFileVersion)
	dev = append(dev, 0x04, 0xaa, 0x1f) // a section, then EOF
	got, err := withConfiguration(dev, "microvm", []string{"x-ignore-shared"})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasSuffix(got, []byte{0x04, 0xaa, 0x1f}) || got[8] != vmConfiguration {
		t.Fatalf("stream % x", got)
	}
	if _, err := withConfiguration(got, "microvm", nil); err == nil {
		t.Error("a stream with a configuration section got another")
	}
	if _, err := withConfiguration([]byte("QEVM"), "microvm", nil); err == nil {
		t.Error("a short stream was accepted")
	}
}

// TestForkWarmClone (real QEMU, the agent as init): a VM started from a
// warm template forks the fast way: its fork's state holds device state
// only (no RAM stream), the fork runs on a RAM file of its own built from
// the template's file and the clone's written pages, with the clone's
// processes and files, and forks the fast way in turn; the template's
// files do not change; the configuration section put in front of the
// device state is the one QEMU writes.
func TestForkWarmClone(t *testing.T) {
	g := newAgentGuest(t)
	if g.d.memDir == "" {
		t.Skip("no tmpfs memory dir")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := filepath.Join(g.work, "tpl")
	tplKey, tplDisk := g.template(t, ctx, "tpf0", 256, dir)
	memSum := fileSum(t, filepath.Join(dir, TemplateMemoryFile))

	// The configuration section as QEMU wrote it into the template's
	// stream (saved with x-ignore-shared on).
	tplState, err := os.ReadFile(filepath.Join(dir, StateMemoryFile))
	if err != nil {
		t.Fatal(err)
	}
	hdr, _ := withConfiguration(append(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, vmFileMagic), vmFileVersion), 0), "microvm", []string{"x-ignore-shared"})
	hdr = hdr[:len(hdr)-1]
	if !bytes.HasPrefix(tplState, hdr) {
		t.Fatalf("configuration section differs from QEMU's:\nours % x\nqemu % x", hdr, tplState[:min(len(tplState), len(hdr)+16)])
	}

	owner := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(g.owner.PublicKey())))
	spec := g.spec(t, "fwc1", 256, tplDisk, disk.FormatQcow2, "mqf1", "52:54:00:77:01:01", "10.77.0.41/24")
	h, err := g.d.StartClone(ctx, spec, dir)
	if err != nil {
		t.Fatal(err)
	}
	defer g.d.Kill(context.Background(), h)
	ac, err := vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(tplKey, nil))
	if err != nil {
		t.Fatal(err)
	}
	id := vsockcli.Identity{Hostname: "fwc1", MachineID: vsockcli.NewMachineID(), MAC: "52:54:00:77:01:01",
		IP: netip.MustParsePrefix("10.77.0.41/24"), Gateway: netip.MustParseAddr("10.77.0.1"), AuthorizedKeys: []string{owner}}
	r, err := ac.Reidentify(ctx, id)
	ac.Close()
	if err != nil {
		t.Fatal(err)
	}
	key := r.AgentHostKey
	ac, err = vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(key, nil))
	if err != nil {
		t.Fatal(err)
	}
	// Written pages the template does not have: 8 MiB of random bytes in
	// a tmpfs file, and a counter process.
	run := func(c *vsockcli.Client, cmd string) string {
		t.Helper()
		var out bytes.Buffer
		code, err := c.Exec(ctx, vsockcli.ExecRequest{Command: cmd, Stdout: &out, Stderr: &out})
		if err != nil || code != 0 {
			t.Fatalf("%q: exit %d, %v: %s", cmd, code, err, out.String())
		}
		return strings.TrimSpace(out.String())
	}
	run(ac, "mkdir -p /run/t && mount -t tmpfs tmpfs /run/t 2>/dev/null; head -c 8388608 /dev/urandom > /run/t/blob")
	sum := run(ac, "md5sum /run/t/blob | cut -d' ' -f1")
	pid := run(ac, `setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/t/counter; sleep 0.2; done' </dev/null >/dev/null 2>&1 & echo $!`)
	ac.Close()
	time.Sleep(500 * time.Millisecond)

	// forkOf forks h; early: with the fork's QEMU started before the save.
	forkOf := func(h *hypervisor.Handle, src hypervisor.Spec, name, tap, mac string, early bool) (*hypervisor.Handle, hypervisor.Spec) {
		t.Helper()
		sd := t.TempDir()
		c := g.spec(t, name, 256, tplDisk, disk.FormatQcow2, tap, mac, "10.77.0.99/24")
		var wait func() (*hypervisor.Handle, error)
		if early {
			var err error
			if wait, err = g.d.StartCopy(ctx, c, sd); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		if err := g.d.SaveCopy(ctx, h, sd); err != nil {
			t.Fatal(err)
		}
		saved := time.Since(start)
		// The fork's disk is a copy of the source's taken while it is
		// paused, as the engine makes it.
		b, err := os.ReadFile(src.Disks[0].Path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(c.Disks[0].Path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := g.d.Resume(ctx, h); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(filepath.Join(sd, StateMemoryFile))
		if err != nil || st.Size() > 4<<20 {
			t.Fatalf("fork state of %s: %v, %v (want device state only)", src.ID, st, err)
		}
		if cp, err := os.Readlink(filepath.Join(sd, copyRAMFile)); err != nil || filepath.Dir(cp) != g.d.memDir {
			t.Fatalf("ram copy link: %q, %v", cp, err)
		}
		var r *hypervisor.Handle
		if early {
			if r, err = wait(); err == nil {
				if err = g.d.FinishCopy(ctx, r, sd); err != nil {
					g.d.Kill(context.Background(), r)
				}
			}
		} else {
			r, err = g.d.RestoreCopy(ctx, c, sd)
		}
		if err != nil {
			b, _ := os.ReadFile(filepath.Join(c.RunDir, qemuLog))
			t.Fatalf("restore fork of %s: %v\nqemu.log:\n%s", src.ID, err, b)
		}
		t.Logf("fork %s of %s: saved in %v (state %d bytes), restored %v after the save", name, src.ID, saved, st.Size(), time.Since(start)-saved)
		if st, err := os.Stat(g.d.memPath(name)); err != nil || st.Size() < 256<<20 || st.Size() > 256<<20+tcgRAMPadKiB<<10 {
			t.Fatalf("fork %s has no ram file of its own: %v, %v", name, st, err)
		}
		return r, c
	}
	check := func(h *hypervisor.Handle, name string) {
		t.Helper()
		c, err := vsockcli.WaitReady(ctx, h.Agent, g.agentConfig(key, nil))
		if err != nil {
			t.Fatalf("%s: agent: %v", name, err)
		}
		defer c.Close()
		if got := run(c, "md5sum /run/t/blob | cut -d' ' -f1"); got != sum {
			t.Errorf("%s: blob sum %s, want %s", name, got, sum)
		}
		n1, _ := strconv.Atoi(run(c, "cat /proc/"+pid+"/cmdline >/dev/null && cat /run/t/counter"))
		time.Sleep(time.Second)
		n2, _ := strconv.Atoi(run(c, "cat /run/t/counter"))
		if n1 == 0 || n2 <= n1 {
			t.Errorf("%s: counter %d then %d: not running on", name, n1, n2)
		}
	}
	f1, _ := forkOf(h, spec, "fwf1", "mqf2", "52:54:00:77:01:02", false)
	defer g.d.Kill(context.Background(), f1)
	check(f1, "fork of the clone")
	check(h, "the clone after its fork")
	// The fork has a RAM file of its own: it forks the fast way too.
	m, err := readMachine(f1.RunDir)
	if err != nil || !m.MemOwn || m.isClone() {
		t.Fatalf("fork's machine: %+v, %v", m, err)
	}
	f2, _ := forkOf(f1, hypervisor.Spec{ID: "fwf1", Disks: []hypervisor.Disk{{Path: filepath.Join(g.work, "fwf1", "disk.qcow2")}}}, "fwf2", "mqf3", "52:54:00:77:01:03", false)
	defer g.d.Kill(context.Background(), f2)
	check(f2, "fork of the fork")
	// A fork of the clone whose QEMU started before the save (StartCopy):
	// the template's RAM and the written pages go into its RAM file.
	f3, _ := forkOf(h, spec, "fwf3", "mqf4", "52:54:00:77:01:04", true)
	defer g.d.Kill(context.Background(), f3)
	check(f3, "early fork of the clone")
	for _, x := range []*hypervisor.Handle{f3, f2, f1, h} {
		if err := g.d.Kill(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	if fileSum(t, filepath.Join(dir, TemplateMemoryFile)) != memSum {
		t.Fatal("the template's ram file changed")
	}
	for _, id := range []string{"fwc1", "fwf1", "fwf2", "fwf3"} {
		if _, err := os.Stat(g.d.memPath(id)); err == nil {
			t.Errorf("ram file of %s left after Kill", id)
		}
	}
}
