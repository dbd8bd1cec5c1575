// Package tuitest provides Fake, a deterministic in-memory service.Backend
// for the dashboard's tests and for running it by hand (tui/cmd/tuidemo).
// It implements what the dashboard calls; the rest of service.Backend
// (users, tokens, web, building images) is absent and panics if called.
package tuitest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui"
)

// Epoch is the fixed time the seeded VMs are measured from.
var Epoch = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// Fake is an in-memory service.Backend. It is safe for concurrent use. Its
// clock is Now (default: Epoch + 1h, fixed) so output is deterministic.
type Fake struct {
	// Backend is nil: the methods the dashboard never calls are absent.
	service.Backend

	// Now is the clock; set it before use.
	Now func() time.Time
	// StepDelay is slept between Create's progress steps and in
	// Start/Stop/Restart (0 in tests; the demo uses a few hundred ms).
	StepDelay time.Duration

	mu    sync.Mutex
	vms   map[string]*vmState // by ID
	seq   int
	fails map[string]error
	calls []string
	// images replaces defaultImages when set.
	images []service.ImageInfo
	// hosts is the host registry (hosts.go).
	hosts []service.Host
}

type vmState struct {
	vm     service.VM
	snaps  []service.Snapshot
	tail   []string
	events []service.Event
}

// SetOps sets VM name's restart policy and restart count, and the events
// Events reports for it.
func (f *Fake) SetOps(name, restart string, restarts int, events []service.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.vms {
		if s.vm.Name == name {
			s.vm.Restart, s.vm.Restarts, s.events = restart, restarts, append([]service.Event(nil), events...)
		}
	}
}

var _ service.Backend = (*Fake)(nil)

// New returns a Fake with no VMs.
func New() *Fake {
	f := &Fake{vms: map[string]*vmState{}, fails: map[string]error{}}
	f.Now = func() time.Time { return Epoch.Add(time.Hour) }
	return f
}

// NewSeeded returns a Fake with a few VMs owned by alice and bob, created
// and started relative to Epoch.
func NewSeeded() *Fake { return NewSeededAt(Epoch) }

// NewSeededAt is NewSeeded with the VMs' times relative to base; its clock
// stays fixed at base + 1h unless Now is replaced.
func NewSeededAt(base time.Time) *Fake {
	Epoch := base
	f := New()
	f.Now = func() time.Time { return base.Add(time.Hour) }
	f.Add(service.VM{Name: "web", Status: tui.StatusRunning, CPUs: 2, MemoryMiB: 1024, DiskGiB: 10, Image: "debian-12", Owner: "alice",
		CreatedAt: Epoch.Add(-72 * time.Hour), StartedAt: Epoch.Add(-3*time.Hour - 4*time.Minute)})
	f.Add(service.VM{Name: "db", Status: tui.StatusRunning, CPUs: 4, MemoryMiB: 4096, DiskGiB: 40, Image: "debian-12", Owner: "alice",
		CreatedAt: Epoch.Add(-240 * time.Hour), StartedAt: Epoch.Add(-49 * time.Hour)})
	f.Add(service.VM{Name: "worker", Status: tui.StatusStopped, CPUs: 1, MemoryMiB: 512, DiskGiB: 5, Image: "alpine-3.21", Owner: "alice",
		CreatedAt: Epoch.Add(-5 * time.Hour)})
	f.Add(service.VM{Name: "ci-runner", Status: tui.StatusRunning, CPUs: 2, MemoryMiB: 2048, DiskGiB: 20, Image: "ubuntu-24.04", Owner: "bob",
		CreatedAt: Epoch.Add(-30 * time.Minute), StartedAt: Epoch.Add(-25 * time.Minute)})
	f.mu.Lock()
	for _, s := range f.vms {
		if s.vm.Name == "web" {
			s.snaps = []service.Snapshot{
				{Name: "before-upgrade", VM: "web", CreatedAt: Epoch.Add(-48 * time.Hour), SizeBytes: 69206016, Memory: true},
				{Name: "nightly", VM: "web", CreatedAt: Epoch.Add(-2 * time.Hour), SizeBytes: 12582912},
			}
		}
	}
	f.mu.Unlock()
	return f
}

// Add inserts v, filling ID, IP and console tail when empty.
func (f *Fake) Add(v service.VM) service.VM {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addLocked(v)
}

func (f *Fake) addLocked(v service.VM) service.VM {
	f.seq++
	if v.ID == "" {
		v.ID = fmt.Sprintf("%012x", 0xa1b2c3000000+f.seq)
	}
	if v.IP == "" {
		v.IP = fmt.Sprintf("10.77.0.%d", f.seq+1)
	}
	if v.CreatedAt.IsZero() {
		v.CreatedAt = f.Now()
	}
	s := &vmState{vm: v}
	if v.Status == tui.StatusRunning {
		s.tail = bootLog(v)
	}
	f.vms[v.ID] = s
	return v
}

func bootLog(v service.VM) []string {
	return []string{
		"[    0.000000] Linux version 6.1.0-31-cloud-amd64",
		"[    0.412345] virtio_blk virtio1: [vda] 20971520 512-byte logical blocks",
		"[    0.903210] Run /init as init process",
		"minions-agent: ready",
		fmt.Sprintf("%s login: ", v.Name),
	}
}

// Fail makes every later call of method (e.g. "Stop") return err; a nil
// err clears it.
func (f *Fake) Fail(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err == nil {
		delete(f.fails, method)
		return
	}
	f.fails[method] = err
}

// Calls returns the mutating calls made so far ("Stop web"), in order.
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

// VM returns the VM called name.
func (f *Fake) VM(name string) (service.VM, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.byName(name)
	if s == nil {
		return service.VM{}, false
	}
	return s.vm, true
}

func (f *Fake) byName(name string) *vmState {
	for _, s := range f.vms {
		if s.vm.Name == name {
			return s
		}
	}
	return nil
}

// begin records a call and returns the injected failure or the VM.
func (f *Fake) begin(method, name string, record bool) (*vmState, error) {
	if record {
		f.calls = append(f.calls, strings.TrimSpace(method+" "+name))
	}
	if err := f.fails[method]; err != nil {
		return nil, err
	}
	if name == "" {
		return nil, nil
	}
	s := f.byName(name)
	if s == nil {
		return nil, errs.New(errs.NotFound, "vm %q", name)
	}
	return s, nil
}

func (f *Fake) sleep(ctx context.Context) error {
	if f.StepDelay <= 0 {
		return ctx.Err()
	}
	select {
	case <-time.After(f.StepDelay):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Whoami returns alice, the owner of created VMs.
func (f *Fake) Whoami(context.Context) (service.Caller, error) {
	return service.Caller{Name: "alice"}, nil
}

// Close does nothing.
func (f *Fake) Close() error { return nil }

// URL is the VM's web address (for tui.Options.URL).
func (f *Fake) URL(name string) string { return "https://" + name + ".minions.test" }

// List implements service.Backend; VMs are sorted by name.
func (f *Fake) List(ctx context.Context) ([]service.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin("List", "", false); err != nil {
		return nil, err
	}
	out := make([]service.VM, 0, len(f.vms))
	for _, s := range f.vms {
		out = append(out, s.vm)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Get implements service.Backend.
func (f *Fake) Get(ctx context.Context, name string) (service.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("Get", name, false)
	if err != nil {
		return service.VM{}, err
	}
	return s.vm, nil
}

// Status implements service.Backend: a running VM's agent answers.
func (f *Fake) Status(ctx context.Context, name string) (service.GuestStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("Status", name, false)
	if err != nil {
		return service.GuestStatus{}, err
	}
	if s.vm.Status != tui.StatusRunning {
		return service.GuestStatus{}, errs.New(errs.FailedPrecondition, "vm is %s", s.vm.Status)
	}
	return service.GuestStatus{
		AgentVersion: "0.1.0", Hostname: s.vm.Name, Kernel: "6.1.0-31-cloud-amd64",
		UptimeS: f.Now().Sub(s.vm.StartedAt).Seconds(), Load: [3]float64{0.12, 0.05, 0.01},
		MemTotal: uint64(s.vm.MemoryMiB) << 20, MemAvailable: uint64(s.vm.MemoryMiB) << 19,
		DiskTotal: uint64(s.vm.DiskGiB) << 30, DiskFree: uint64(s.vm.DiskGiB) << 29,
	}, nil
}

// Logs implements service.Backend (follow is ignored: the log is what
// it is).
func (f *Fake) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	f.mu.Lock()
	s, err := f.begin("Logs", name, false)
	var tail []string
	if err == nil {
		tail = append(tail, s.tail...)
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	for _, l := range tail {
		if _, err := io.WriteString(w, l+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// Events implements service.Backend: the events SetOps gave the VM with
// ID filter.VM (every VM's without).
func (f *Fake) Events(ctx context.Context, filter service.EventFilter) ([]service.Event, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin("Events", "", false); err != nil {
		return nil, err
	}
	var out []service.Event
	for _, s := range f.vms {
		if filter.VM == "" || filter.VM == s.vm.ID {
			out = append(out, s.events...)
		}
	}
	return out, nil
}

// defaultImages are the images a Fake offers until SetImages.
var defaultImages = []service.ImageInfo{
	{Ref: "alpine-3.21", OS: "alpine-3.21", Version: "1"},
	{Ref: "debian-12", OS: "debian-12", Version: "1", Default: true},
	{Ref: "ubuntu-24.04", OS: "ubuntu-24.04", Version: "1"},
}

// Image is an image of os, the default or not, for SetImages.
func Image(os string, isDefault bool) service.ImageInfo {
	return service.ImageInfo{Ref: os, OS: os, Version: "1", Default: isDefault}
}

// SetImages replaces the images ListImages returns.
func (f *Fake) SetImages(ims []service.ImageInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.images = append([]service.ImageInfo{}, ims...)
}

// ListImages implements service.Backend. Its failure is injected as
// "Images".
func (f *Fake) ListImages(ctx context.Context) ([]service.ImageInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.begin("Images", "", false); err != nil {
		return nil, err
	}
	if f.images != nil {
		return append([]service.ImageInfo{}, f.images...), nil
	}
	return append([]service.ImageInfo{}, defaultImages...), nil
}

// Create implements service.Backend. Steps: allocating address, creating
// disk, booting, waiting for agent.
func (f *Fake) Create(ctx context.Context, req service.CreateRequest, progress service.Progress) (service.VM, error) {
	f.mu.Lock()
	_, err := f.begin("Create", "", true)
	if err == nil && f.byName(req.Name) != nil {
		err = errs.New(errs.AlreadyExists, "vm %q", req.Name)
	}
	f.calls[len(f.calls)-1] = "Create " + req.Name
	f.mu.Unlock()
	if err != nil {
		return service.VM{}, err
	}
	for _, step := range []string{"allocating address", "creating disk", "booting", "waiting for agent"} {
		if progress != nil {
			progress(step)
		}
		if err := f.sleep(ctx); err != nil {
			return service.VM{}, err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byName(req.Name) != nil {
		return service.VM{}, errs.New(errs.AlreadyExists, "vm %q", req.Name)
	}
	disk := req.DiskGiB
	if disk == 0 {
		disk = 10
	}
	return f.addLocked(service.VM{Name: req.Name, Status: tui.StatusRunning, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB,
		DiskGiB: disk, Image: req.Image, Owner: "alice", StartedAt: f.Now()}), nil
}

func (f *Fake) transition(ctx context.Context, method, name string, from []string, apply func(*vmState)) (service.VM, error) {
	f.mu.Lock()
	s, err := f.begin(method, name, true)
	if err == nil {
		ok := false
		for _, st := range from {
			ok = ok || s.vm.Status == st
		}
		if !ok {
			err = errs.New(errs.FailedPrecondition, "vm %q is %s", name, s.vm.Status)
		}
	}
	f.mu.Unlock()
	if err != nil {
		return service.VM{}, err
	}
	if err := f.sleep(ctx); err != nil {
		return service.VM{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	apply(s)
	return s.vm, nil
}

// Start implements service.Backend.
func (f *Fake) Start(ctx context.Context, name string, _ service.Progress) (service.VM, error) {
	return f.transition(ctx, "Start", name, []string{tui.StatusStopped, tui.StatusError}, func(s *vmState) {
		s.vm.Status, s.vm.StartedAt, s.tail = tui.StatusRunning, f.Now(), bootLog(s.vm)
	})
}

// Stop implements service.Backend.
func (f *Fake) Stop(ctx context.Context, name string) (service.VM, error) {
	return f.transition(ctx, "Stop", name, []string{tui.StatusRunning}, func(s *vmState) {
		s.vm.Status, s.vm.StartedAt = tui.StatusStopped, time.Time{}
		s.tail = append(s.tail, "reboot: Power down")
	})
}

// Restart implements service.Backend.
func (f *Fake) Restart(ctx context.Context, name string, _ service.Progress) (service.VM, error) {
	return f.transition(ctx, "Restart", name, []string{tui.StatusRunning}, func(s *vmState) {
		s.vm.StartedAt, s.tail = f.Now(), bootLog(s.vm)
	})
}

// Destroy implements service.Backend.
func (f *Fake) Destroy(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("Destroy", name, true)
	if err != nil {
		return err
	}
	delete(f.vms, s.vm.ID)
	return nil
}

// Resize implements service.Backend.
func (f *Fake) Resize(ctx context.Context, name string, req service.ResizeRequest) (service.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("Resize", name, true)
	if err != nil {
		return service.VM{}, err
	}
	f.calls[len(f.calls)-1] = fmt.Sprintf("Resize %s cpus=%d mem=%d disk=%d", name, req.CPUs, req.MemoryMiB, req.DiskGiB)
	if req.DiskGiB != 0 && req.DiskGiB < s.vm.DiskGiB {
		return service.VM{}, errs.New(errs.InvalidArgument, "disk can only grow (%d GiB now)", s.vm.DiskGiB)
	}
	if req.CPUs != 0 {
		s.vm.CPUs = req.CPUs
	}
	if req.MemoryMiB != 0 {
		s.vm.MemoryMiB = req.MemoryMiB
	}
	if req.DiskGiB != 0 {
		s.vm.DiskGiB = req.DiskGiB
	}
	return s.vm, nil
}

// CreateSnapshot implements service.Backend. The call is recorded as
// "SnapshotCreate vm snap" with " memory" for a memory snapshot, which
// needs a running VM.
func (f *Fake) CreateSnapshot(ctx context.Context, name string, req service.SnapshotRequest, _ service.Progress) (service.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("SnapshotCreate", name, true)
	if err != nil {
		return service.Snapshot{}, err
	}
	f.calls[len(f.calls)-1] += " " + req.Name
	if req.Memory {
		f.calls[len(f.calls)-1] += " memory"
		if s.vm.Status != tui.StatusRunning {
			return service.Snapshot{}, errs.New(errs.FailedPrecondition, "a memory snapshot needs a running vm; %s is %s", name, s.vm.Status)
		}
	}
	for _, sn := range s.snaps {
		if sn.Name == req.Name {
			return service.Snapshot{}, errs.New(errs.AlreadyExists, "snapshot %q of %q", req.Name, name)
		}
	}
	f.seq++
	sn := service.Snapshot{Name: req.Name, VM: name, CreatedAt: f.Now(), SizeBytes: 8 << 20, Memory: req.Memory}
	s.snaps = append(s.snaps, sn)
	return sn, nil
}

// ListSnapshots implements service.Backend (failures injected as
// "SnapshotList").
func (f *Fake) ListSnapshots(ctx context.Context, name string) ([]service.Snapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("SnapshotList", name, false)
	if err != nil {
		return nil, err
	}
	return append([]service.Snapshot(nil), s.snaps...), nil
}

func (f *Fake) snapIndex(s *vmState, name, snap string) (int, error) {
	for i, sn := range s.snaps {
		if sn.Name == snap {
			return i, nil
		}
	}
	return -1, errs.New(errs.NotFound, "snapshot %q of %q", snap, name)
}

// RestoreSnapshot implements service.Backend (recorded as
// "SnapshotRestore vm snap").
func (f *Fake) RestoreSnapshot(ctx context.Context, name, snap string, _ service.Progress) (service.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("SnapshotRestore", name, true)
	if err != nil {
		return service.VM{}, err
	}
	f.calls[len(f.calls)-1] += " " + snap
	if _, err = f.snapIndex(s, name, snap); err != nil {
		return service.VM{}, err
	}
	return s.vm, nil
}

// DeleteSnapshot implements service.Backend (recorded as
// "SnapshotDelete vm snap").
func (f *Fake) DeleteSnapshot(ctx context.Context, name, snap string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("SnapshotDelete", name, true)
	if err != nil {
		return err
	}
	f.calls[len(f.calls)-1] += " " + snap
	i, err := f.snapIndex(s, name, snap)
	if err != nil {
		return err
	}
	s.snaps = append(s.snaps[:i], s.snaps[i+1:]...)
	return nil
}

// Rename implements service.Backend.
func (f *Fake) Rename(ctx context.Context, name, newName string) (service.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("Rename", name, true)
	if err != nil {
		return service.VM{}, err
	}
	f.calls[len(f.calls)-1] += " " + newName
	if f.byName(newName) != nil {
		return service.VM{}, errs.New(errs.AlreadyExists, "vm %q", newName)
	}
	s.vm.Name = newName
	return s.vm, nil
}

// Copy implements service.Backend; the copy is stopped.
func (f *Fake) Copy(ctx context.Context, name string, req service.CopyRequest, _ service.Progress) (service.VM, error) {
	newName := req.Name
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("Copy", name, true)
	if err != nil {
		return service.VM{}, err
	}
	f.calls[len(f.calls)-1] += " " + newName
	if f.byName(newName) != nil {
		return service.VM{}, errs.New(errs.AlreadyExists, "vm %q", newName)
	}
	v := s.vm
	v.ID, v.IP, v.Name, v.Status, v.StartedAt, v.CreatedAt = "", "", newName, tui.StatusStopped, time.Time{}, f.Now()
	return f.addLocked(v), nil
}

// Fork implements service.Backend: a running copy of a running VM
// (recorded as "Fork vm new-name").
func (f *Fake) Fork(ctx context.Context, name string, req service.ForkRequest, _ service.Progress) (service.VM, error) {
	newName := req.Name
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.begin("Fork", name, true)
	if err != nil {
		return service.VM{}, err
	}
	f.calls[len(f.calls)-1] += " " + newName
	if s.vm.Status != tui.StatusRunning {
		return service.VM{}, errs.New(errs.FailedPrecondition, "fork needs a running vm; %s is %s", name, s.vm.Status)
	}
	if f.byName(newName) != nil {
		return service.VM{}, errs.New(errs.AlreadyExists, "vm %q", newName)
	}
	v := s.vm
	v.ID, v.IP, v.Name, v.StartedAt, v.CreatedAt = "", "", newName, f.Now(), f.Now()
	return f.addLocked(v), nil
}

// Exec implements service.Backend for interactive shells only (the
// dashboard's console; recorded as "Console vm"): a tiny line-oriented
// shell that echoes what is typed (the terminal is raw) and understands
// exit, hostname, stty size (the latest window size) and echo. It returns
// exit status 0.
func (f *Fake) Exec(ctx context.Context, name string, req service.ExecRequest) (int, error) {
	f.mu.Lock()
	s, err := f.begin("Console", name, true)
	if err == nil && s.vm.Status != tui.StatusRunning {
		err = errs.New(errs.FailedPrecondition, "vm %q is %s", name, s.vm.Status)
	}
	if err == nil && (!req.TTY || req.Command != "" || len(req.Argv) > 0) {
		err = errs.New(errs.InvalidArgument, "the fake runs interactive shells only")
	}
	f.mu.Unlock()
	if err != nil {
		return -1, err
	}
	return 0, f.shell(ctx, name, req.Stdin, req.Stdout, req.Width, req.Height, req.Resize)
}

func (f *Fake) shell(ctx context.Context, name string, stdin io.Reader, stdout io.Writer, w, h int, size <-chan service.WindowSize) error {
	var mu sync.Mutex
	cur := service.WindowSize{Width: w, Height: h}
	go func() {
		for {
			select {
			case w, ok := <-size:
				if !ok {
					return
				}
				mu.Lock()
				cur = w
				mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	}()
	prompt := "root@" + name + ":~# "
	type readRes struct {
		b   []byte
		err error
	}
	reads := make(chan readRes)
	go func() {
		for {
			buf := make([]byte, 1024)
			n, err := stdin.Read(buf)
			select {
			case reads <- readRes{buf[:n], err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	if _, err := io.WriteString(stdout, prompt); err != nil {
		return err
	}
	var line bytes.Buffer
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-reads:
			for _, c := range r.b {
				switch c {
				case '\r', '\n':
					cmd := strings.TrimSpace(line.String())
					line.Reset()
					out := ""
					switch {
					case cmd == "exit":
						io.WriteString(stdout, "\r\nlogout\r\n")
						return nil
					case cmd == "hostname":
						out = name
					case cmd == "stty size":
						mu.Lock()
						out = fmt.Sprintf("%d %d", cur.Height, cur.Width)
						mu.Unlock()
					case strings.HasPrefix(cmd, "echo "):
						out = strings.TrimPrefix(cmd, "echo ")
					case cmd == "":
					default:
						out = "sh: " + cmd + ": not found"
					}
					if out != "" {
						out = "\r\n" + out
					}
					if _, err := io.WriteString(stdout, out+"\r\n"+prompt); err != nil {
						return err
					}
				case 0x7f, 0x08:
					if line.Len() > 0 {
						line.Truncate(line.Len() - 1)
						io.WriteString(stdout, "\b \b")
					}
				default:
					line.WriteByte(c)
					stdout.Write([]byte{c})
				}
			}
			if r.err != nil {
				if r.err == io.EOF {
					return nil
				}
				return r.err
			}
		}
	}
}
