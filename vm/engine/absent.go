package engine

import (
	"context"
	"net"

	"github.com/minionsdev/minions/internal/errs"
	"github.com/minionsdev/minions/vsockcli"
)

// Absent is the Engine of a process that manages no VMs: a host command
// that opens an installation only for what needs no hypervisor (the
// image catalogue, settings). Every VM operation fails with
// errs.Unavailable naming Reason; List is empty and Reconcile,
// ReattachPorts and OnExit do nothing. Safe for concurrent use.
type Absent struct {
	// Reason completes "no vm engine in this process: ..." in errors.
	Reason string
}

var _ Engine = Absent{}

func (a Absent) err() error {
	return errs.New(errs.Unavailable, "no vm engine in this process: %s", a.Reason)
}

func (a Absent) Create(context.Context, CreateSpec, Progress) (Instance, error) {
	return Instance{}, a.err()
}
func (a Absent) Start(context.Context, string, Progress) (Instance, error) {
	return Instance{}, a.err()
}
func (a Absent) Stop(context.Context, string) (Instance, error) { return Instance{}, a.err() }
func (a Absent) Restart(context.Context, string, Progress) (Instance, error) {
	return Instance{}, a.err()
}
func (a Absent) Destroy(context.Context, string) error                    { return a.err() }
func (a Absent) Rename(context.Context, string, string) (Instance, error) { return Instance{}, a.err() }
func (a Absent) Resize(context.Context, string, ResizeSpec) (Instance, error) {
	return Instance{}, a.err()
}
func (a Absent) Snapshot(context.Context, string, SnapshotSpec, Progress) (SnapshotInfo, error) {
	return SnapshotInfo{}, a.err()
}
func (a Absent) Snapshots(context.Context, string) ([]SnapshotInfo, error) { return nil, a.err() }
func (a Absent) RestoreSnapshot(context.Context, string, string, Progress) (Instance, error) {
	return Instance{}, a.err()
}
func (a Absent) DeleteSnapshot(context.Context, string, string) error    { return a.err() }
func (a Absent) Get(context.Context, string) (Instance, error)           { return Instance{}, a.err() }
func (a Absent) List(context.Context) ([]Instance, error)                { return []Instance{}, nil }
func (a Absent) Reconcile(context.Context) error                         { return nil }
func (a Absent) OnExit(ExitFunc)                                         {}
func (a Absent) ReattachPorts(context.Context) error                     { return nil }
func (a Absent) Capacity(context.Context) (Capacity, error)              { return Capacity{}, a.err() }
func (a Absent) DialAgent(context.Context, string) (net.Conn, error)     { return nil, a.err() }
func (a Absent) Agent(context.Context, string) (*vsockcli.Client, error) { return nil, a.err() }
func (a Absent) ConsoleLog(context.Context, string) (string, error)      { return "", a.err() }
