package tui

import (
	"context"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/minionsdev/minions/service"
)

// vmKeys returns the action keys that apply to v, for footers.
func (c *common) vmKeys(v *service.VM) []key.Binding {
	k := c.keys
	if v == nil {
		return []key.Binding{k.Create}
	}
	out := []key.Binding{k.Create}
	switch v.Status {
	case StatusRunning:
		out = append(out, k.Console, k.Stop, k.Restart)
	case StatusStopped, StatusError:
		out = append(out, k.Start)
	}
	out = append(out, k.Resize, k.Snapshots, k.Rename, k.Copy)
	if v.Status == StatusRunning {
		out = append(out, k.Fork)
	}
	return append(out, k.Destroy)
}

// vmHelp groups every VM action for the help page.
func (c *common) vmHelp() []key.Binding {
	k := c.keys
	return []key.Binding{k.Create, k.Start, k.Stop, k.Restart, k.Console, k.Resize, k.Snapshots, k.Rename, k.Copy, k.Fork, k.Destroy}
}

// vmAction maps an action key on v (nil: no VM selected) to its command.
// It reports false when msg is not an action key or does not apply.
func (c *common) vmAction(msg tea.KeyMsg, v *service.VM) (tea.Cmd, bool) {
	k := c.keys
	if key.Matches(msg, k.Create) {
		return c.open(newCreatePage(c)), true
	}
	if v == nil {
		return nil, false
	}
	name := v.Name
	b := c.backend
	simple := func(verb, doing string, fn func(context.Context, string) error) tea.Cmd {
		return tea.Sequence(status(doing+" "+name+"…"), c.op(verb, name, func(ctx context.Context) error {
			return fn(ctx, name)
		}))
	}
	running := v.Status == StatusRunning
	switch {
	case key.Matches(msg, k.Start) && !running:
		return simple("start", "starting", func(ctx context.Context, n string) error { _, err := b.Start(ctx, n, nil); return err }), true
	case key.Matches(msg, k.Stop) && running:
		return simple("stop", "stopping", func(ctx context.Context, n string) error { _, err := b.Stop(ctx, n); return err }), true
	case key.Matches(msg, k.Restart) && running:
		return simple("restart", "restarting", func(ctx context.Context, n string) error { _, err := b.Restart(ctx, n, nil); return err }), true
	case key.Matches(msg, k.Console) && running:
		return c.console(name), true
	case key.Matches(msg, k.Resize):
		return c.open(newResizePage(c, *v)), true
	case key.Matches(msg, k.Snapshots):
		return c.open(newSnapshotsPage(c, name)), true
	case key.Matches(msg, k.Rename):
		return c.open(newPromptPage(c, "rename", "Rename "+name, "New name", name, func(nn string) tea.Cmd {
			return func() tea.Msg {
				_, err := b.Rename(c.ctx, name, nn)
				return opDoneMsg{verb: "rename", name: name, to: nn, err: err}
			}
		})), true
	case key.Matches(msg, k.Copy):
		return c.open(newPromptPage(c, "copy", "Copy "+name, "New name", name+"-copy", func(nn string) tea.Cmd {
			return tea.Sequence(status("copying "+name+" to "+nn+"…"), func() tea.Msg {
				_, err := b.Copy(c.ctx, name, service.CopyRequest{Name: nn}, nil)
				return opDoneMsg{verb: "copy", name: name, to: nn, err: err}
			})
		})), true
	case key.Matches(msg, k.Fork) && running:
		return c.open(newPromptPage(c, "fork", "Fork "+name+" (a running copy with its own identity)", "New name", name+"-fork", func(nn string) tea.Cmd {
			return tea.Batch(status("forking "+name+" to "+nn+"…"), func() tea.Msg {
				_, err := b.Fork(c.ctx, name, service.ForkRequest{Name: nn}, nil)
				return opDoneMsg{verb: "fork", name: name, to: nn, err: err}
			})
		})), true
	case key.Matches(msg, k.Destroy):
		return c.open(newConfirmPage(c, "Destroy "+name+"?",
			"This deletes the VM, its disk and all its snapshots.\nIt cannot be undone.",
			simple("destroy", "destroying", b.Destroy))), true
	}
	return nil, false
}
