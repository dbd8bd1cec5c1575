package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vm/network"
	"github.com/minionsdev/minions/vsockcli"
)

// Boot paths (Instance.Boot).
const (
	BootWarm = "warm" // restored from a warm template and re-identified
	BootCold = "cold" // booted from the image
)

// Template is a warm template of this host: an image version booted once
// to agent-ready and saved, for one shape (vCPUs, memory, disk). Creates
// of that image version and shape restore from it instead of booting.
//
// A template lives in StateDir/templates/KEY/: the template's disk (a
// qcow2 child of the image, never written after the save), the driver's
// files (RAM and device state) and manifest.json, written last. A
// directory without a manifest is an unfinished build: Reconcile removes
// it, so a build killed midway leaves nothing behind.
type Template struct {
	Key       string `json:"key"`
	Image     string `json:"image"` // resolved reference, "os@version"
	ImagePath string `json:"image_path"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	DiskGiB   int    `json:"disk_gib"`
	Kernel    string `json:"kernel"`
	Initramfs string `json:"initramfs,omitempty"`
	Cmdline   string `json:"cmdline"`
	// Disk is the template's disk, the backing file of every instance
	// restored from it: outside the template's directory, kept when the
	// template is dropped.
	Disk      string    `json:"disk"`
	CreatedAt time.Time `json:"created_at"`
	// BuildMillis is how long the build took (boot to agent-ready + save).
	BuildMillis int64 `json:"build_ms"`
}

const templateManifest = "manifest.json"

// templateKey names the template of an image version (its reference and
// file, so a rebuilt image under the same reference never matches) and a
// shape.
func templateKey(img Image, cpus, memMiB, diskGiB int) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%s\x00%s\x00%d\x00%d\x00%d", img.Ref, img.Path, img.Kernel, img.Initramfs, cpus, memMiB, diskGiB))
	return hex.EncodeToString(h[:])[:16]
}

func (l *Local) templatesDir() string          { return filepath.Join(l.cfg.StateDir, "templates") }
func (l *Local) templateDir(key string) string { return filepath.Join(l.templatesDir(), key) }

// templateID is the pseudo instance ID of a template's build VM (its TAP,
// run dir and lock hang off it); it never collides with vm.NewID IDs,
// which are hex only.
func templateID(key string) string { return "t" + key[:11] }

// templateBuildLock is the lock (see lockVM) a template build holds: one
// at a time per host (templateIP).
const templateBuildLock = "template-build"

// templateIP is the address a template's build VM holds on the bridge
// while it boots: the last usable address of the subnet, never handed to
// an instance (see allocate). The guest is booted without an address
// (clones get theirs at re-identification), so nothing is ever sent from it.
func (l *Local) templateIP() netip.Addr {
	p := l.cfg.Subnet.Masked()
	a := p.Addr()
	n := uint32(1)<<(32-p.Bits()) - 2 // broadcast - 1
	b := a.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// templateCID is the vsock CID of a template's build VM (drivers whose
// agent channel is vsock): far above the CIDs allocate hands out.
const templateCID = 1 << 30

// templater is the driver as a Templater, or nil when it cannot make
// templates or templates are off.
func (l *Local) templater() hypervisor.Templater {
	if l.cfg.NoWarm {
		return nil
	}
	t, _ := l.Driver.(hypervisor.Templater)
	return t
}

func readTemplate(dir string) (Template, error) {
	b, err := os.ReadFile(filepath.Join(dir, templateManifest))
	if err != nil {
		return Template{}, err
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return Template{}, err
	}
	return t, nil
}

// Templates lists the complete templates of this host, by image then
// shape.
func (l *Local) Templates(ctx context.Context) ([]Template, error) {
	return ReadTemplates(l.cfg.StateDir)
}

// ReadTemplates lists the complete templates kept under a state directory
// (Config.StateDir), by image then shape, without an engine (e.g. for a
// listing by a CLI that does not open one).
func ReadTemplates(stateDir string) ([]Template, error) {
	root := filepath.Join(stateDir, "templates")
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return []Template{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := []Template{}
	for _, e := range ents {
		if t, err := readTemplate(filepath.Join(root, e.Name())); err == nil && t.Key == e.Name() {
			out = append(out, t)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Image != b.Image {
			return a.Image < b.Image
		}
		if a.CPUs != b.CPUs {
			return a.CPUs < b.CPUs
		}
		return a.MemoryMiB < b.MemoryMiB
	})
	return out, nil
}

// findTemplate returns the complete template for img and a shape.
func (l *Local) findTemplate(img Image, cpus, memMiB, diskGiB int) (Template, bool) {
	key := templateKey(img, cpus, memMiB, diskGiB)
	t, err := readTemplate(l.templateDir(key))
	if err != nil || t.Key != key || t.Image != img.Ref {
		return Template{}, false
	}
	return t, true
}

// DropTemplate removes template key (idempotent). Instances restored
// from it keep running and keep their disks: their memory is a private
// mapping of the (unlinked) RAM file and their disks are children of the
// template's disk, which lives apart (Template.Disk) and is kept.
func (l *Local) DropTemplate(ctx context.Context, key string) error {
	if len(key) != 16 || strings.Trim(key, "0123456789abcdef") != "" {
		return errs.New(errs.InvalidArgument, "invalid template key %q", key)
	}
	unlock, err := l.lockVM(ctx, templateID(key))
	if err != nil {
		return err
	}
	defer unlock()
	l.dropTemplateFiles(key)
	return nil
}

// DropTemplates removes every template of image reference ref ("" for
// all), e.g. when the image is rebuilt or removed.
func (l *Local) DropTemplates(ctx context.Context, ref string) error {
	ts, err := l.Templates(ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if ref == "" || t.Image == ref || strings.HasPrefix(t.Image, ref+"@") {
			if err := l.DropTemplate(ctx, t.Key); err != nil {
				return err
			}
		}
	}
	return nil
}

// dropTemplateFiles makes template key unusable at once (the manifest goes
// first) and removes its directory. Its disk (Template.Disk, outside the
// directory) stays: it is the backing file of every instance restored from
// the template.
func (l *Local) dropTemplateFiles(key string) {
	dir := l.templateDir(key)
	os.Remove(filepath.Join(dir, templateManifest))
	os.RemoveAll(dir)
	os.RemoveAll(l.runDir(templateID(key)))
}

// WarmTemplate makes sure a template exists for image ref and a shape,
// building it now if needed (boot to agent-ready, save): it returns once
// the template is usable. diskGiB 0 takes the image's size rounded up to
// whole GiB (at least 1). Templates need a driver that implements
// hypervisor.Templater and a host where it can share memory (QEMU; under
// the per-VM jail with its RAM on the memory dir's tmpfs): otherwise
// errs.FailedPrecondition. progress, if set, is told each step of a build.
func (l *Local) WarmTemplate(ctx context.Context, ref string, cpus, memMiB, diskGiB int, progress Progress) (Template, error) {
	tr := l.templater()
	if tr == nil {
		return Template{}, errs.New(errs.FailedPrecondition, "warm templates are off on this host (driver %s, no_warm %v)", l.Driver.Name(), l.cfg.NoWarm)
	}
	img, err := l.Images.Resolve(ctx, ref)
	if err != nil {
		return Template{}, err
	}
	if diskGiB == 0 {
		diskGiB = max(1, int((img.SizeBytes+1<<30-1)>>30))
	}
	if err := vm.ValidResources(cpus, memMiB, diskGiB); err != nil {
		return Template{}, err
	}
	key := templateKey(img, cpus, memMiB, diskGiB)
	unlock, err := l.lockVM(ctx, templateID(key))
	if err != nil {
		return Template{}, err
	}
	defer unlock()
	if t, ok := l.findTemplate(img, cpus, memMiB, diskGiB); ok {
		return t, nil
	}
	// One build at a time on a host, whatever its key and whichever
	// process runs it: every build VM holds the subnet's template
	// address, and two builds booting side by side only slow each other.
	unlockBuild, err := l.tryLock(templateBuildLock)
	if err != nil {
		progress.Say("wait for another template build")
		if unlockBuild, err = l.lockVM(ctx, templateBuildLock); err != nil {
			return Template{}, err
		}
	}
	defer unlockBuild()
	t, err := l.buildTemplate(ctx, tr, img, key, cpus, memMiB, diskGiB, progress)
	if err != nil {
		return Template{}, fmt.Errorf("warm template of %s (%d cpus, %d MiB): %w", img.Ref, cpus, memMiB, l.diskFull(err))
	}
	l.log.Info("template ready", "image", img.Ref, "cpus", cpus, "memory_mib", memMiB, "key", key, "build_ms", t.BuildMillis)
	return t, nil
}

// buildTemplate boots and saves template key. Call with its lock held. On
// failure nothing of it is left.
func (l *Local) buildTemplate(ctx context.Context, tr hypervisor.Templater, img Image, key string, cpus, memMiB, diskGiB int, progress Progress) (t Template, err error) {
	start := time.Now()
	dir := l.templateDir(key)
	id := templateID(key)
	run := l.runDir(id)
	tap := tapName(id)
	var u undo
	defer func() {
		if err != nil {
			u.run()
		}
	}()
	l.dropTemplateFiles(key) // leftovers of an older or unfinished build
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return t, err
	}
	u.push(func() { l.dropTemplateFiles(key) })
	disks := filepath.Join(l.templatesDir(), ".disks")
	if err := os.MkdirAll(disks, 0o700); err != nil {
		return t, err
	}
	progress.Say("disk")
	tdisk := filepath.Join(disks, fmt.Sprintf("%s-%d.qcow2", key, time.Now().UnixNano()))
	u.push(func() { os.Remove(tdisk) })
	if err := l.Disks.CreateOverlay(ctx, img.Path, img.Format, tdisk, int64(diskGiB)<<30); err != nil {
		return t, fmt.Errorf("disk: %w", err)
	}
	mac := network.MAC(id).String()
	if err := l.Network.AddPort(ctx, tap, l.templateIP(), mac); err != nil {
		return t, fmt.Errorf("network: %w", err)
	}
	u.push(func() { l.Network.RemovePort(context.Background(), tap) })
	if err := os.MkdirAll(run, 0o700); err != nil {
		return t, err
	}
	t = Template{Key: key, Image: img.Ref, ImagePath: img.Path, CPUs: cpus, MemoryMiB: memMiB, DiskGiB: diskGiB, Disk: tdisk,
		Kernel: img.Kernel, Initramfs: img.Initramfs,
		Cmdline: vm.Cmdline(vm.BootParams{ID: id, Name: "template", HostKey: hostKeyParam(l.HostKey)})}
	spec := hypervisor.Spec{ID: id, Name: "template", CPUs: cpus, MemoryMiB: memMiB,
		Kernel: t.Kernel, Initramfs: t.Initramfs, Cmdline: t.Cmdline,
		Disks:  []hypervisor.Disk{{Path: tdisk, Format: "qcow2"}},
		Net:    &hypervisor.NetIface{TAP: tap, MAC: mac},
		RunDir: run, ConsoleLog: filepath.Join(dir, "console.log"),
		VsockCID: templateCID}
	progress.Say("boot")
	console := consolelog.NewFollowerFromEnd(spec.ConsoleLog) // this boot's output only
	h, err := tr.BootTemplate(ctx, spec, dir)
	if err != nil {
		console.Close()
		return t, err
	}
	saved := false
	defer func() {
		if !saved {
			l.Driver.Kill(context.Background(), h)
		}
	}()
	progress.Say("agent")
	cl, err := l.waitReady(ctx, console, h.Agent, l.agentConfig("", nil))
	if err != nil {
		return t, fmt.Errorf("template agent: %w", err)
	}
	progress.Say("settle")
	settleTemplate(ctx, cl, l.log.With("vm_id", id))
	quietTemplate(ctx, h.PID, cl, l.log.With("vm_id", id))
	cl.Close()
	progress.Say("save")
	if err := tr.SaveTemplate(ctx, h, dir); err != nil {
		return t, err
	}
	saved = true
	l.Network.RemovePort(context.Background(), tap)
	os.RemoveAll(run)
	t.CreatedAt = time.Now().UTC()
	t.BuildMillis = time.Since(start).Milliseconds()
	if err := writeFileSync(filepath.Join(dir, templateManifest), t); err != nil {
		return t, err
	}
	return t, nil
}

// writeFileSync writes v as JSON to path atomically and durably (see
// writeBytesSync).
func writeFileSync(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeBytesSync(path, b)
}

// writeBytesSync writes b to path atomically and durably (a temporary
// file, fsync, rename, fsync of the directory).
func writeBytesSync(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// reconcileTemplates removes unfinished template builds (a directory
// without a manifest whose lock nobody holds) and kills their VMs.
func (l *Local) reconcileTemplates(ctx context.Context) {
	ents, err := os.ReadDir(l.templatesDir())
	if err != nil {
		return
	}
	for _, e := range ents {
		key := e.Name()
		if !e.IsDir() || len(key) != 16 {
			continue
		}
		if fileExists(filepath.Join(l.templateDir(key), templateManifest)) {
			continue
		}
		unlock, err := l.tryLock(templateID(key))
		if err != nil {
			continue // a build in progress
		}
		if !fileExists(filepath.Join(l.templateDir(key), templateManifest)) {
			l.killRunDir(templateID(key))
			l.Network.RemovePort(ctx, tapName(templateID(key)))
			l.dropTemplateFiles(key)
			l.log.Warn("removed an unfinished template build", "key", key)
		}
		unlock()
	}
}

// templateSettleCmd waits, in a Minions guest with systemd, until its
// boot is over (every unit started: sshd listening, journald, timers), at
// most 3 minutes, and then writes what the boot left dirty to the disk
// (else every clone writes the template's dirty pages again, on its vCPU,
// in its first seconds); a guest without systemd (the agent is init) is
// done at once, and so is anything that is not a Minions guest (the
// engine tests' in-process agents run commands on the test host).
const templateSettleCmd = `if grep -q minions.id= /proc/cmdline && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then ` +
	`timeout 180 systemctl is-system-running --wait >/dev/null 2>&1; sync; fi; true`

// settleTemplate waits until the template guest has finished booting, so
// a clone wakes up with sshd listening and nothing left of the boot to run
// (under TCG a clone still booting competes with its first user for its
// vCPU). Best effort: a guest that never settles is saved as it is, with a
// warning.
func settleTemplate(ctx context.Context, cl interface {
	Exec(context.Context, vsockcli.ExecRequest) (int, error)
}, log *slog.Logger) {
	start := time.Now()
	var out strings.Builder
	code, err := cl.Exec(ctx, vsockcli.ExecRequest{Command: templateSettleCmd, Stdout: &out, Stderr: &out})
	if err != nil || code != 0 {
		log.Warn("template guest did not settle; saved as it is", "code", code, "err", err, "output", out.String())
		return
	}
	log.Info("template guest settled", "duration_ms", time.Since(start).Milliseconds())
}
