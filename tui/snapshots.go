package tui

import (
	"context"
	"fmt"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/minionsdev/minions/tui/widget"
)

// snapshotsPage lists one VM's snapshots: take, restore, delete.
type snapshotsPage struct {
	c      *common
	name   string
	snaps  []Snapshot
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
		s, err := c.backend.SnapshotList(c.ctx, name)
		return snapshotsMsg{name: name, snaps: s, err: err}
	}
}

func (p *snapshotsPage) Title() string    { return "snapshots" }
func (p *snapshotsPage) Capturing() bool  { return false }
func (p *snapshotsPage) SetSize(w, h int) { p.table.SetSize(w, h-2) }

func (p *snapshotsPage) selected() *Snapshot {
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
				kind := "disk"
				if s.Memory {
					kind = "disk+memory"
				}
				rows[i] = []string{s.Name, s.Created.UTC().Format("2006-01-02 15:04"), fmtBytes(uint64(max(s.SizeBytes, 0))), kind}
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
	switch {
	case key.Matches(msg, k.Back):
		return c.back()
	case key.Matches(msg, k.Up):
		p.table.Move(-1)
	case key.Matches(msg, k.Down):
		p.table.Move(1)
	case key.Matches(msg, k.Top):
		p.table.Top()
	case key.Matches(msg, k.Bottom):
		p.table.Bottom()
	case key.Matches(msg, k.SnapNew):
		def := fmt.Sprintf("snap-%s", c.now().UTC().Format("20060102-150405"))
		return c.open(newPromptPage(c, "new", "Snapshot "+name, "Name", def, func(sn string) tea.Cmd {
			return tea.Batch(status("taking snapshot "+sn+" of "+name+"…"), c.op("snapshot", name, func(ctx context.Context) error {
				_, err := c.backend.SnapshotCreate(ctx, name, sn)
				return err
			}))
		}))
	case key.Matches(msg, k.SnapRestore):
		if s := p.selected(); s != nil {
			sn := s.Name
			return c.open(newConfirmPage(c, "Restore "+name+" to "+sn+"?",
				"The VM's current disk"+memNote(s)+" is replaced by the snapshot.",
				tea.Batch(status("restoring "+name+" to "+sn+"…"), c.op("restore", name, func(ctx context.Context) error {
					return c.backend.SnapshotRestore(ctx, name, sn)
				}))))
		}
	case key.Matches(msg, k.SnapDelete):
		if s := p.selected(); s != nil {
			sn := s.Name
			return c.open(newConfirmPage(c, "Delete snapshot "+sn+"?", "It cannot be undone.",
				c.op("delete snapshot", name, func(ctx context.Context) error {
					return c.backend.SnapshotDelete(ctx, name, sn)
				})))
		}
	}
	return nil
}

func memNote(s *Snapshot) string {
	if s.Memory {
		return " and memory"
	}
	return ""
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
	return [][]key.Binding{{k.Up, k.Down, k.Top, k.Bottom, k.Back}, {k.SnapNew, k.SnapRestore, k.SnapDelete}, {k.Help, k.Quit}}
}
