package tui

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/minionsdev/minions/tui/widget"

	"github.com/minionsdev/minions/service"
)

// listPage is the main screen: a live table of the caller's VMs.
type listPage struct {
	c       *common
	table   widget.Table
	vms     []service.VM // all, as loaded
	shown   []service.VM // after the filter
	filter  widget.Input
	editing bool // the filter input has focus
	loaded  bool
	width   int
	height  int
}

func newListPage(c *common) *listPage {
	p := &listPage{c: c}
	p.table.Styles = c.styles.Table
	p.table.EmptyText = "No VMs yet. Press n to create one."
	cols := []widget.Column{
		{Title: "NAME", Width: 12, Flex: true},
		{Title: "STATUS", Width: 8},
		{Title: "IP", Width: 15, Priority: 3},
		{Title: "CPUS", Width: 4, Right: true, Priority: 4},
		{Title: "MEMORY", Width: 6, Right: true, Priority: 5},
		{Title: "UPTIME", Width: 7, Right: true, Priority: 2},
	}
	if c.admin {
		cols = append(cols, widget.Column{Title: "OWNER", Width: 10, Priority: 1})
	}
	p.table.Columns = cols
	p.filter.Placeholder = "name, status, ip, image…"
	p.filter.Limit = 64
	p.filter.TextStyle = c.styles.Form.Text
	p.filter.PlaceholderStyle = c.styles.Form.Placeholder
	p.filter.CursorStyle = c.styles.Form.Cursor
	return p
}

func (p *listPage) Init() tea.Cmd { return p.refresh() }

func (p *listPage) refresh() tea.Cmd {
	c := p.c
	return func() tea.Msg {
		vms, err := c.backend.List(c.ctx)
		return vmsMsg{vms: vms, err: err}
	}
}

func (p *listPage) Title() string { return "" }

func (p *listPage) Capturing() bool { return p.editing }

func (p *listPage) SetSize(w, h int) {
	p.width, p.height = w, h
	th := h
	if p.filterShown() {
		th--
	}
	p.table.SetSize(w, th)
}

func (p *listPage) filterShown() bool { return p.editing || p.filter.Value() != "" }

// selected returns the VM under the cursor, or nil.
func (p *listPage) selected() *service.VM {
	i := p.table.Cursor()
	if i < 0 || i >= len(p.shown) {
		return nil
	}
	v := p.shown[i]
	return &v
}

func (p *listPage) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case vmsMsg:
		if msg.err == nil {
			p.vms = msg.vms
			p.loaded = true
			p.apply()
		}
	case opDoneMsg:
		if msg.verb == "copy" || msg.verb == "create" {
			return p.refresh()
		}
	case tea.KeyMsg:
		if p.editing {
			return p.filterKey(msg)
		}
		return p.key(msg)
	}
	return nil
}

func (p *listPage) filterKey(msg tea.KeyMsg) tea.Cmd {
	switch msg.Type {
	case tea.KeyEnter:
		p.editing = false
		p.filter.Blur()
	case tea.KeyEsc:
		p.editing = false
		p.filter.Blur()
		p.filter.SetValue("")
	case tea.KeyUp, tea.KeyDown:
		p.editing = false
		p.filter.Blur()
		return p.key(msg)
	default:
		p.filter.Update(msg)
	}
	p.apply()
	p.SetSize(p.width, p.height)
	return nil
}

func (p *listPage) key(msg tea.KeyMsg) tea.Cmd {
	k := p.c.keys
	if k.navigate(msg, &p.table) {
		return nil
	}
	switch {
	case key.Matches(msg, k.Filter):
		p.editing = true
		p.filter.Focus()
		p.SetSize(p.width, p.height)
	case key.Matches(msg, k.Back):
		if p.filter.Value() != "" {
			p.filter.SetValue("")
			p.apply()
			p.SetSize(p.width, p.height)
		}
	case key.Matches(msg, k.Open):
		if v := p.selected(); v != nil {
			return p.c.open(newDetailPage(p.c, v.Name))
		}
	case key.Matches(msg, k.Hosts):
		return p.c.openHosts()
	default:
		if cmd, ok := p.c.vmAction(msg, p.selected()); ok {
			return cmd
		}
	}
	return nil
}

// apply filters the VMs and rebuilds the rows, keeping the cursor on the
// same VM when it is still shown.
func (p *listPage) apply() {
	var keep string
	if v := p.selected(); v != nil {
		keep = v.ID
	}
	q := strings.ToLower(strings.TrimSpace(p.filter.Value()))
	p.shown = p.shown[:0]
	for _, v := range p.vms {
		if q == "" || matches(v, q) {
			p.shown = append(p.shown, v)
		}
	}
	rows := make([][]string, len(p.shown))
	cur := -1
	for i, v := range p.shown {
		rows[i] = []string{
			v.Name,
			p.c.styles.statusStyle(v.Status).Render(v.Status),
			orDash(v.IP),
			strconv.Itoa(v.CPUs),
			fmtMemory(v.MemoryMiB),
			p.c.uptime(v),
			orDash(v.Owner),
		}
		if v.ID == keep {
			cur = i
		}
	}
	p.table.SetRows(rows)
	if cur >= 0 {
		p.table.SetCursor(cur)
	}
	if q != "" {
		p.table.EmptyText = fmt.Sprintf("No VM matches %q.", q)
	} else if !p.loaded {
		p.table.EmptyText = "Loading…"
	} else {
		p.table.EmptyText = "No VMs yet. Press n to create one."
	}
}

func matches(v service.VM, q string) bool {
	for _, f := range []string{v.Name, v.Status, v.IP, v.Image, v.Owner, v.ID} {
		if strings.Contains(strings.ToLower(f), q) {
			return true
		}
	}
	return false
}

func (p *listPage) View() string {
	if !p.loaded && len(p.vms) == 0 {
		p.table.EmptyText = "Loading…"
	}
	var b strings.Builder
	if p.filterShown() {
		b.WriteString(p.c.styles.Label.Render("/ ") + p.filter.View())
		if !p.editing {
			b.WriteString(p.c.styles.Dim.Render(fmt.Sprintf("  (%d of %d)", len(p.shown), len(p.vms))))
		}
		b.WriteString("\n")
	}
	b.WriteString(p.table.View())
	return b.String()
}

func (p *listPage) ShortHelp() []key.Binding {
	k := p.c.keys
	if p.editing {
		return []key.Binding{
			key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "apply")),
			key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "clear")),
		}
	}
	out := []key.Binding{}
	if p.selected() != nil {
		out = append(out, k.Open)
	}
	out = append(out, k.Filter)
	if p.filter.Value() != "" {
		out = append(out, key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "clear filter")))
	}
	if p.c.admin {
		out = append(out, k.Hosts)
	}
	return append(out, p.c.vmKeys(p.selected())...)
}

func (p *listPage) FullHelp() [][]key.Binding {
	k := p.c.keys
	more := []key.Binding{k.Help, k.Quit, k.ForceQuit}
	if p.c.admin {
		more = append([]key.Binding{k.Hosts}, more...)
	}
	return [][]key.Binding{
		k.help(k.Open, k.Filter, k.Back),
		p.c.vmHelp(),
		more,
	}
}
