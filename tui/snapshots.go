package tui

import (
	"context"
	"fmt"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/minionsdev/minions/tui/widget"

	"github.com/minionsdev/minions/internal/units"
	"github.com/minionsdev/minions/service"
)

// snapshotsPage lists one VM's snapshots: take, restore, delete.
type snapshotsPage struct {
	c      *common
	name   string
	snaps  []service.Snapshot
	err    error
	loaded bool
	table  widget.Table
}

func newSnapshotsPage(c *common, name string) *snapshotsPage {
	p := &snapshotsPage{c: c, name: name}
	p.table.Styles = c.styles.Table
	p.table.EmptyText = "Loading…"
	p.table.Columns = []widget.Column{
		{Title: "NAME", Width: 14, Flex: true},
		{Title: "CREATED", Width: 16, Priority: 2},
		{Title: "SIZE", Width: 9, Right: true, Priority: 3},
		{Title: "KIND", Width: 11, Priority: 1},
	}
	return p
}

func (p *snapshotsPage) Init() tea.Cmd { return p.refresh() }

func (p *snapshotsPage) refresh() tea.Cmd {
	c, name := p.c, p.name
	return func() tea.Msg {
		s, err := c.backend.ListSnapshots(c.ctx, name)
		return snapshotsMsg{name: name, snaps: s, err: err}
	}
}

func (p *snapshotsPage) Title() string    { return "snapshots" }
func (p *snapshotsPage) Capturing() bool  { return false }
func (p *snapshotsPage) SetSize(w, h int) { p.table.SetSize(w, h-2) }

func (p *snapshotsPage) selected() *service.Snapshot {
	i := p.table.Cursor()
	if i < 0 || i >= len(p.snaps) {
		return nil
	}
	return &p.snaps[i]
}

func (p *snapshotsPage) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case snapshotsMsg:
		if msg.name != p.name {
			return nil
		}
		p.err = msg.err
		if msg.err == nil {
			p.loaded = true
			p.snaps = msg.snaps
			rows := make([][]string, len(p.snaps))
			for i, s := range p.snaps {
				rows[i] = []string{s.Name, s.CreatedAt.UTC().Format("2006-01-02 15:04"), units.Bytes(s.SizeBytes), snapKind(s)}
			}
			p.table.SetRows(rows)
			p.table.EmptyText = "No snapshots. Press n to take one."
		}
	case opDoneMsg:
		if msg.name == p.name && msg.verb == "rename" && msg.err == nil {
			p.name = msg.to
		}
	case tea.KeyMsg:
		return p.key(msg)
	}
	return nil
}

func (p *snapshotsPage) key(msg tea.KeyMsg) tea.Cmd {
	k, c, name := p.c.keys, p.c, p.name
	if k.navigate(msg, &p.table) {
		return nil
	}
	switch {
	case key.Matches(msg, k.Back):
		return c.back()
	case key.Matches(msg, k.SnapNew):
		return c.open(newSnapshotForm(c, name))
	case key.Matches(msg, k.SnapRestore):
		if s := p.selected(); s != nil {
			sn, kind := s.Name, snapKind(*s)
			return c.open(newConfirmPage(c, "Restore "+name+" from "+sn+" ("+kind+")?", restoreNote(s),
				tea.Sequence(status("restoring "+name+" from "+sn+" ("+kind+")…"),
					c.opNote("restore", name, kind+" snapshot "+sn, func(ctx context.Context) error {
						_, err := c.backend.RestoreSnapshot(ctx, name, sn, nil)
						return err
					}))))
		}
	case key.Matches(msg, k.SnapDelete):
		if s := p.selected(); s != nil {
			sn := s.Name
			return c.open(newConfirmPage(c, "Delete snapshot "+sn+"?", "It cannot be undone.",
				c.op("delete snapshot", name, func(ctx context.Context) error {
					return c.backend.DeleteSnapshot(ctx, name, sn)
				})))
		}
	}
	return nil
}

// restoreNote says what a restore from s replaces and how the VM comes
// back.
func restoreNote(s *service.Snapshot) string {
	if s.Memory {
		return "Restores disk and memory: the VM resumes running where the snapshot was taken. Its current disk and memory are replaced."
	}
	return "Restores the disk only: the VM boots from the snapshot's disk. Its current disk is replaced."
}

// Snapshot kinds offered by the form; the first is the default.
var snapshotKinds = []string{"disk", "disk+memory"}

// newSnapshotForm asks for a snapshot's name and kind: disk only, or disk
// and memory (space or ←/→ toggles).
func newSnapshotForm(c *common, name string) *formPage {
	p := &formPage{c: c, title: "new"}
	def := fmt.Sprintf("snap-%s", c.now().UTC().Format("20060102-150405"))
	kind := widget.NewChoiceField("Kind", snapshotKinds, 0)
	kind.Hint = "space toggles; disk+memory also saves the running VM's memory, so a restore resumes it"
	p.form = widget.NewForm("Snapshot "+name, c.styles.Form, c.formKeys(),
		widget.NewTextField("Name", def, "", 63, validName), kind)
	p.submit = func(f *widget.Form) tea.Cmd {
		req := service.SnapshotRequest{Name: f.Fields[0].Value(), Memory: f.Fields[1].Value() == snapshotKinds[1]}
		k := f.Fields[1].Value()
		return tea.Sequence(p.c.back(), status("taking "+k+" snapshot "+req.Name+" of "+name+"…"),
			c.opNote("snapshot", name, k+" "+req.Name, func(ctx context.Context) error {
				_, err := c.backend.CreateSnapshot(ctx, name, req, nil)
				return err
			}))
	}
	return p
}

func (p *snapshotsPage) View() string {
	st := p.c.styles
	head := st.Title.Render("Snapshots of " + p.name)
	if p.err != nil {
		head += "  " + st.Error.Render(errorText(p.err))
	}
	return head + "\n\n" + p.table.View()
}

func (p *snapshotsPage) ShortHelp() []key.Binding {
	k := p.c.keys
	out := []key.Binding{k.Back, k.SnapNew}
	if p.selected() != nil {
		out = append(out, k.SnapRestore, k.SnapDelete)
	}
	return out
}

func (p *snapshotsPage) FullHelp() [][]key.Binding {
	k := p.c.keys
	return [][]key.Binding{k.help(k.Back), {k.SnapNew, k.SnapRestore, k.SnapDelete}, {k.Help, k.Quit}}
}
