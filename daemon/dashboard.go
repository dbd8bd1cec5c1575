package daemon

import (
	"bytes"
	"context"
	"io"
	"strings"
	"time"

	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui"
)

// dashBackend adapts a cli.Backend (in-process or a remote daemon) to the
// dashboard's tui.Backend, so `minions tui`, `minions tui --host` and the
// SSH dashboard share one implementation.
type dashBackend struct {
	be  service.Backend
	url func(vm string) string
}

var _ tui.Backend = dashBackend{}

func tuiVM(v service.VM) tui.VM {
	return tui.VM{ID: v.ID, Name: v.Name, Status: v.Status, IP: v.IP, CPUs: v.CPUs, MemoryMiB: v.MemoryMiB, DiskGiB: v.DiskGiB,
		Image: v.Image, Created: v.CreatedAt, StartedAt: v.StartedAt, Owner: v.Owner}
}

func (d dashBackend) List(ctx context.Context) ([]tui.VM, error) {
	vms, err := d.be.List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]tui.VM, 0, len(vms))
	for _, v := range vms {
		out = append(out, tuiVM(v))
	}
	return out, nil
}

func (d dashBackend) Get(ctx context.Context, name string) (tui.Detail, error) {
	v, err := d.be.Get(ctx, name)
	if err != nil {
		return tui.Detail{}, err
	}
	det := tui.Detail{VM: tuiVM(v)}
	if d.url != nil {
		det.URL = d.url(v.Name)
	}
	if v.Status == "running" {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := d.be.Status(sctx, name)
		cancel()
		if err != nil {
			det.Agent.Error = err.Error()
		} else {
			det.Agent = tui.AgentStatus{Connected: true, Version: st.AgentVersion, Kernel: st.Kernel,
				Uptime: time.Duration(st.UptimeS * float64(time.Second)), Load: st.Load, MemTotal: st.MemTotal,
				MemAvailable: st.MemAvailable, DiskTotal: st.DiskTotal, DiskFree: st.DiskFree}
		}
	}
	var buf bytes.Buffer
	if err := d.be.Logs(ctx, name, false, &limitTail{w: &buf, max: 64 << 10}); err == nil {
		lines := strings.Split(strings.TrimRight(buf.String(), "\n"), "\n")
		if len(lines) > 50 {
			lines = lines[len(lines)-50:]
		}
		det.ConsoleTail = lines
	}
	det.Restart, det.Restarts = v.Restart, v.Restarts
	{
		if evs, err := d.be.Events(ctx, service.EventFilter{VM: v.ID, Limit: 5}); err == nil {
			for _, e := range evs {
				det.Events = append(det.Events, tui.Event{At: e.At, Actor: e.Actor, Kind: e.Kind, Message: e.Message})
			}
		}
	}
	if ss, err := d.be.ListSnapshots(ctx, name); err == nil {
		for _, s := range ss {
			det.Snapshots = append(det.Snapshots, tuiSnap(s))
		}
	}
	return det, nil
}

// limitTail keeps the last max bytes written to it.
type limitTail struct {
	w   *bytes.Buffer
	max int
}

func (l *limitTail) Write(p []byte) (int, error) {
	l.w.Write(p)
	if l.w.Len() > l.max {
		b := l.w.Bytes()[l.w.Len()-l.max:]
		nb := append([]byte(nil), b...)
		l.w.Reset()
		l.w.Write(nb)
	}
	return len(p), nil
}

func tuiSnap(s service.Snapshot) tui.Snapshot {
	return tui.Snapshot{ID: s.Name, Name: s.Name, Created: s.CreatedAt, SizeBytes: s.SizeBytes, Memory: s.Memory}
}

func (d dashBackend) Create(ctx context.Context, req tui.CreateRequest, progress func(string)) (tui.VM, error) {
	v, err := d.be.Create(ctx, service.CreateRequest{Name: req.Name, CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, DiskGiB: req.DiskGiB, Image: req.Image}, progress)
	return tuiVM(v), err
}

func (d dashBackend) Start(ctx context.Context, name string) error {
	_, err := d.be.Start(ctx, name, nil)
	return err
}

func (d dashBackend) Stop(ctx context.Context, name string) error {
	_, err := d.be.Stop(ctx, name)
	return err
}

func (d dashBackend) Restart(ctx context.Context, name string) error {
	_, err := d.be.Restart(ctx, name, nil)
	return err
}

func (d dashBackend) Destroy(ctx context.Context, name string) error { return d.be.Destroy(ctx, name) }

func (d dashBackend) Resize(ctx context.Context, name string, req tui.ResizeRequest) error {
	_, err := d.be.Resize(ctx, name, service.ResizeRequest{CPUs: req.CPUs, MemoryMiB: req.MemoryMiB, DiskGiB: req.DiskGiB})
	return err
}

func (d dashBackend) SnapshotCreate(ctx context.Context, name string, req tui.SnapshotRequest) (tui.Snapshot, error) {
	s, err := d.be.CreateSnapshot(ctx, name, service.SnapshotRequest{Name: req.Name, Memory: req.Memory}, nil)
	return tuiSnap(s), err
}

func (d dashBackend) SnapshotList(ctx context.Context, name string) ([]tui.Snapshot, error) {
	ss, err := d.be.ListSnapshots(ctx, name)
	if err != nil {
		return nil, err
	}
	out := []tui.Snapshot{}
	for _, s := range ss {
		out = append(out, tuiSnap(s))
	}
	return out, nil
}

func (d dashBackend) SnapshotRestore(ctx context.Context, name, snap string) error {
	_, err := d.be.RestoreSnapshot(ctx, name, snap, nil)
	return err
}

func (d dashBackend) SnapshotDelete(ctx context.Context, name, snap string) error {
	return d.be.DeleteSnapshot(ctx, name, snap)
}

func (d dashBackend) Rename(ctx context.Context, name, newName string) error {
	_, err := d.be.Rename(ctx, name, newName)
	return err
}

func (d dashBackend) Copy(ctx context.Context, name, newName string) (tui.VM, error) {
	v, err := d.be.Copy(ctx, name, service.CopyRequest{Name: newName}, nil)
	return tuiVM(v), err
}

// Images offers one choice per OS built (its newest version), the default
// preselected; a default pinned to an older version is offered as that
// version.
func (d dashBackend) Images(ctx context.Context) ([]tui.Image, error) {
	ims, err := d.be.ListImages(ctx)
	if err != nil {
		return nil, err
	}
	return dashImages(ims), nil
}

func dashImages(ims []service.ImageInfo) []tui.Image {
	newest := map[string]service.ImageInfo{}
	var order []string
	for _, im := range ims { // oldest first per OS
		if _, ok := newest[im.OS]; !ok {
			order = append(order, im.OS)
		}
		newest[im.OS] = im
	}
	out := []tui.Image{}
	for _, osName := range order {
		out = append(out, tui.Image{Name: osName, Description: "newest " + newest[osName].Ref})
	}
	for _, im := range ims {
		if !im.Default {
			continue
		}
		if newest[im.OS].Ref == im.Ref {
			for i := range out {
				out[i].Default = out[i].Name == im.OS
			}
		} else {
			out = append(out, tui.Image{Name: im.Ref, Description: "the default, pinned", Default: true})
		}
	}
	return out
}

func (d dashBackend) Console(ctx context.Context, name string, stdin io.Reader, stdout io.Writer, size <-chan tui.WindowSize) error {
	req := service.ExecRequest{Stdin: stdin, Stdout: stdout, Stderr: stdout, TTY: true, Term: "xterm-256color"}
	resize := make(chan service.WindowSize, 1)
	// The first size is the initial one.
	select {
	case ws := <-size:
		req.Width, req.Height = ws.Width, ws.Height
	case <-time.After(200 * time.Millisecond):
		req.Width, req.Height = 80, 24
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ws, ok := <-size:
				if !ok {
					return
				}
				select {
				case resize <- service.WindowSize{Width: ws.Width, Height: ws.Height}:
				default:
				}
			}
		}
	}()
	req.Resize = resize
	_, err := d.be.Exec(ctx, name, req)
	return err
}
