package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/minionsdev/minions/guestagent/proto"
	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/store"
	"github.com/minionsdev/minions/vm"
	"github.com/minionsdev/minions/vm/consolelog"
	"github.com/minionsdev/minions/vm/hypervisor"
	"github.com/minionsdev/minions/vsockcli"
	"golang.org/x/crypto/ssh"
)

// Progress receives the name of each step of a long operation as it starts.
type Progress func(step string)

func (p Progress) say(step string) {
	if p != nil {
		p(step)
	}
}

// CreateRequest asks for a new VM. Zero numbers take the configured defaults.
type CreateRequest struct {
	Name      string   `json:"name"`
	CPUs      int      `json:"cpus,omitempty"`
	MemoryMiB int      `json:"memory_mib,omitempty"`
	DiskGiB   int      `json:"disk_gib,omitempty"`
	Image     string   `json:"image,omitempty"`
	SSHKeys   []string `json:"ssh_keys,omitempty"` // extra authorized_keys lines for root
	Restart   string   `json:"restart,omitempty"`  // restart policy: no, on-failure or always (default)
}

// undo is a stack of compensating actions run in reverse, once.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }
func (u *undo) run() {
	for i := len(*u) - 1; i >= 0; i-- {
		(*u)[i]()
	}
	*u = nil
}

// Create makes and boots a VM owned by the caller. It returns once the
// guest agent answers. A failure removes everything the create made.
func (s *Service) Create(ctx context.Context, c Caller, req CreateRequest, progress Progress) (VM, error) {
	if c.UserID == "" {
		return VM{}, errs.New(errs.Unauthenticated, "sign in to create vms")
	}
	if req.CPUs == 0 {
		req.CPUs = s.cfg.DefaultCPUs
	}
	if req.MemoryMiB == 0 {
		req.MemoryMiB = s.cfg.DefaultMemoryMiB
	}
	if req.Image == "" {
		ref, err := s.DefaultImage(ctx)
		if err != nil {
			return VM{}, err
		}
		req.Image = ref
	}
	if err := vm.ValidName("vm", req.Name); err != nil {
		return VM{}, err
	}
	if req.Restart == "" {
		req.Restart = store.RestartAlways
	}
	if err := ValidRestartPolicy(req.Restart); err != nil {
		return VM{}, err
	}
	for _, k := range req.SSHKeys {
		if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
			return VM{}, errs.New(errs.InvalidArgument, "invalid ssh public key %.40q: %v", k, err)
		}
	}
	progress.say("image")
	img, err := s.Images.Resolve(ctx, req.Image)
	if err != nil {
		return VM{}, err
	}
	minDisk := int((img.SizeBytes + 1<<30 - 1) >> 30)
	if req.DiskGiB == 0 {
		req.DiskGiB = max(s.cfg.DefaultDiskGiB, minDisk)
	}
	if err := vm.ValidResources(req.CPUs, req.MemoryMiB, req.DiskGiB); err != nil {
		return VM{}, err
	}
	if req.DiskGiB < minDisk {
		return VM{}, errs.New(errs.InvalidArgument, "disk %d GiB is smaller than image %s (%d GiB)", req.DiskGiB, img.Ref, minDisk)
	}

	row := store.VM{Name: req.Name, OwnerID: c.UserID, Owner: c.Name, Image: img.Ref, CPUs: req.CPUs,
		MemoryMiB: req.MemoryMiB, DiskGiB: req.DiskGiB, Port: 80}
	return s.newVM(ctx, c, row, "create", progress, func(o *op, row store.VM) (store.VM, error) {
		if err := store.PutRestart(ctx, s.DB, store.Restart{VMID: row.ID, Policy: req.Restart}); err != nil {
			return row, err
		}
		return s.createSteps(ctx, o, row, img, req, progress)
	})
}

// newVM records a new VM (state creating, fresh ID and addresses) and its
// durable operation in one transaction that also checks the caller's
// quota, then runs steps under the VM's lock. If steps fail, everything
// that hangs off the new ID is removed, and nothing else.
func (s *Service) newVM(ctx context.Context, c Caller, row store.VM, kind string, progress Progress, steps func(*op, store.VM) (store.VM, error)) (VM, error) {
	row.ID = vm.NewID()
	row.State = store.StateCreating
	row.CreatedAt = time.Now().UTC()
	oprow := newOpRow(row.ID, kind)
	if err := s.checkFreeSpace(kind+" vm "+row.Name, reserveBytes); err != nil {
		return VM{}, err
	}
	progress.say("allocate")
	err := s.DB.Tx(ctx, func(q store.Q) error {
		if err := s.checkQuota(ctx, q, c.UserID, row.CPUs, row.MemoryMiB, row.DiskGiB); err != nil {
			return err
		}
		if err := s.checkHostMemory(ctx, q, row.ID, row.MemoryMiB); err != nil {
			return err
		}
		ip, mac, cid, err := s.allocate(ctx, q, row.ID)
		if err != nil {
			return err
		}
		row.IP, row.MAC, row.CID = ip.String(), mac, cid
		if err := store.InsertVM(ctx, q, row); err != nil {
			return err
		}
		return store.InsertOperation(ctx, q, oprow)
	})
	if err != nil {
		return VM{}, fmt.Errorf("%s vm %s: %w", kind, row.Name, s.diskFull(err))
	}
	o := &op{s: s, row: oprow}
	unlock, err := s.lockVM(ctx, row.ID)
	if err != nil {
		s.purge(context.WithoutCancel(ctx), row.ID)
		o.finish(ctx, err)
		return VM{}, err
	}
	defer unlock()
	v, err := steps(o, row)
	if err != nil {
		err = s.diskFull(err)
		s.purge(context.WithoutCancel(ctx), row.ID)
		o.finish(ctx, err)
		return VM{}, fmt.Errorf("%s vm %s: %w", kind, row.Name, err)
	}
	o.finish(ctx, nil)
	s.record(ctx, c.Name, v, kind, "")
	return s.withRestart(ctx, view(v)), nil
}

func (s *Service) createSteps(ctx context.Context, o *op, row store.VM, img Image, req CreateRequest, progress Progress) (store.VM, error) {
	progress.say("disk")
	o.step(ctx, "disk", nil)
	if err := os.MkdirAll(s.vmDir(row.ID), 0o700); err != nil {
		return row, err
	}
	if err := s.Disks.CreateOverlay(ctx, img.Path, img.Format, s.diskPath(row.ID), int64(row.DiskGiB)<<30); err != nil {
		return row, fmt.Errorf("disk: %w", err)
	}
	v, cl, err := s.boot(ctx, o, row, progress)
	if err != nil {
		return row, err
	}
	defer cl.Close()
	// The hostname comes from the kernel command line at every boot; keys
	// are written once, when there are any.
	if keys := append(s.ownerKeys(ctx, row.OwnerID), req.SSHKeys...); len(keys) > 0 {
		progress.say("configure")
		o.step(ctx, "configure", nil)
		if err := cl.Configure(ctx, proto.Configure{Hostname: &row.Name, AuthorizedKeys: keys}); err != nil {
			return v, fmt.Errorf("configure guest: %w", err)
		}
	}
	return v, nil
}

// diskFull classes err as ResourceExhausted when it says the state
// filesystem is full (errs.DiskFull); other errors pass unchanged.
func (s *Service) diskFull(err error) error { return errs.DiskFull(err, s.cfg.StateDir) }

func (s *Service) diskPath(id string) string { return filepath.Join(s.vmDir(id), "disk.qcow2") }

// boot starts the hypervisor for a VM row whose disk exists, waits for its
// agent and records it running. On failure it has stopped what it started.
func (s *Service) boot(ctx context.Context, o *op, row store.VM, progress Progress) (store.VM, *vsockcli.Client, error) {
	var u undo
	defer u.run()
	img, err := s.Images.Resolve(ctx, row.Image)
	if err != nil {
		return row, nil, fmt.Errorf("image of vm %s: %w", row.Name, err)
	}
	progress.say("network")
	o.step(ctx, "network", nil)
	ip, err := netip.ParseAddr(row.IP)
	if err != nil {
		return row, nil, err
	}
	tap := tapName(row.ID)
	if err := s.Network.AddPort(ctx, tap, ip, row.MAC); err != nil {
		return row, nil, fmt.Errorf("network: %w", err)
	}
	u.push(func() { s.Network.RemovePort(context.Background(), tap) })

	if s.Driver.Caps().KVM {
		progress.say("boot")
	} else {
		progress.say("boot (no usable KVM: TCG software emulation, slower)")
	}
	o.step(ctx, "boot", nil)
	run := s.runDir(row.ID)
	os.RemoveAll(run)
	if err := os.MkdirAll(run, 0o700); err != nil {
		return row, nil, err
	}
	u.push(func() { os.RemoveAll(run) })
	spec := s.spec(row, img, run, ip)
	start := time.Now()
	console := consolelog.NewFollowerFromEnd(spec.ConsoleLog) // this boot's output only
	h, err := s.Driver.Start(ctx, spec)
	if err != nil {
		console.Close()
		return row, nil, fmt.Errorf("boot: %w", err)
	}
	u.push(func() { s.Driver.Kill(context.Background(), h) })
	o.step(ctx, "agent", map[string]any{"handle": h})
	// Record the handle at once so a crash from here on is found.
	row.Handle = encodeHandle(h)
	if err := store.UpdateVM(ctx, s.DB, row); err != nil {
		console.Close()
		return row, nil, err
	}

	progress.say("agent")
	wctx, cancel := context.WithTimeoutCause(ctx, s.cfg.ReadyTimeout, errReadyTimeout)
	defer cancel()
	// A guest that panics will never answer: stop waiting at once.
	pctx, stop := context.WithCancelCause(wctx)
	defer stop(nil)
	go watchConsole(pctx, console, stop)
	var learned string
	cl, err := vsockcli.WaitReady(pctx, h.Agent, s.agentConfig(row.AgentKey, &learned))
	if err != nil {
		if ctx.Err() != nil {
			return row, nil, ctx.Err()
		}
		if cause := context.Cause(pctx); cause != nil && cause != errReadyTimeout && !errors.Is(cause, context.Canceled) {
			err = cause
		}
		return row, nil, s.notReady(row.Name, row.ID, err)
	}
	// The agent grows the root filesystem to the disk by itself, in the
	// background. After a resize, wait for it here so the new size is
	// there when start returns.
	if grow := s.growMarker(row.ID); fileExists(grow) {
		if _, err := cl.GrowFS(ctx); err != nil {
			s.log.Warn("grow guest filesystem", "vm_id", row.ID, "err", err)
		} else {
			os.Remove(grow)
		}
	}
	s.log.Info("vm ready", "vm_id", row.ID, "vm", row.Name, "pid", h.PID, "ready_ms", time.Since(start).Milliseconds())
	if row.AgentKey == "" {
		row.AgentKey = learned
	}
	row.State = store.StateRunning
	row.StartedAt = time.Now().UTC()
	if err := store.UpdateVM(ctx, s.DB, row); err != nil {
		cl.Close()
		return row, nil, err
	}
	u = nil // success: keep everything
	return row, cl, nil
}

func (s *Service) spec(row store.VM, img Image, run string, ip netip.Addr) hypervisor.Spec {
	return hypervisor.Spec{
		ID: row.ID, Name: row.Name, CPUs: row.CPUs, MemoryMiB: row.MemoryMiB,
		Kernel: img.Kernel, Initramfs: img.Initramfs,
		Cmdline: vm.Cmdline(vm.BootParams{
			ID: row.ID, Name: row.Name, HostKey: hostKeyParam(s.HostKey),
			IP:      netip.PrefixFrom(ip, s.cfg.Subnet.Bits()).String(),
			Gateway: s.cfg.Gateway.String(), DNS: s.cfg.DNS,
		}),
		Disks:      []hypervisor.Disk{{Path: s.diskPath(row.ID), Format: "qcow2"}},
		Net:        &hypervisor.NetIface{TAP: tapName(row.ID), MAC: row.MAC},
		RunDir:     run,
		ConsoleLog: s.consolePath(row.ID),
		VsockCID:   row.CID,
	}
}

func hostKeyParam(k ssh.Signer) string {
	return strings.TrimSpace(strings.SplitN(string(ssh.MarshalAuthorizedKey(k.PublicKey())), " ", 3)[1])
}

// ownerKeys returns the authorized_keys lines of a user's registered keys.
func (s *Service) ownerKeys(ctx context.Context, userID string) []string {
	keys, err := store.ListSSHKeys(ctx, s.DB, userID)
	if err != nil {
		return nil
	}
	var out []string
	for _, k := range keys {
		out = append(out, k.PublicKey)
	}
	return out
}

// purge removes every trace of VM id: process, TAP, sockets, disk,
// snapshots and its row. It is idempotent and touches nothing that does not
// hang off id.
func (s *Service) purge(ctx context.Context, id string) {
	if v, err := store.GetVMByID(ctx, s.DB, id); err == nil {
		if h, _ := decodeHandle(v.Handle); h != nil {
			s.Driver.Kill(ctx, h)
		}
	}
	killByRunDir(s.runDir(id))
	s.Network.RemovePort(ctx, tapName(id))
	os.RemoveAll(s.runDir(id))
	os.RemoveAll(s.vmDir(id))
	store.DeleteVM(ctx, s.DB, id)
	s.removeLock(id)
}

// growMarker is a file whose presence says the VM's disk grew while it was
// stopped, so the next boot waits for the guest filesystem to grow.
func (s *Service) growMarker(id string) string { return filepath.Join(s.vmDir(id), "grow-pending") }

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

var errReadyTimeout = errors.New("timed out waiting for the guest agent")

// watchConsole reads a booting VM's console log as it grows (across
// rotations) and calls stop with an error when the guest kernel panics.
// r follows the log from where this boot began (an earlier boot's panic
// does not count); watchConsole closes it.
func watchConsole(ctx context.Context, r *consolelog.Follower, stop context.CancelCauseFunc) {
	var tail []byte
	defer r.Close()
	buf := make([]byte, 64<<10)
	wait := true
	for ctx.Err() == nil {
		if wait {
			select {
			case <-ctx.Done():
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
		n, _ := r.Read(buf)
		wait = n < len(buf) // a full buffer: more is there, read on
		if n == 0 {
			continue
		}
		chunk := append(tail, buf[:n]...)
		if i := bytes.Index(chunk, []byte("Kernel panic - not syncing")); i >= 0 {
			line, _, _ := bytes.Cut(chunk[i:], []byte("\n"))
			stop(errs.New(errs.Unavailable, "the guest kernel panicked: %s", strings.TrimSpace(string(line))))
			return
		}
		if len(chunk) > 64 {
			tail = append([]byte(nil), chunk[len(chunk)-64:]...)
		} else {
			tail = chunk
		}
	}
}
