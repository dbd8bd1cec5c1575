package tui

import (
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"

	"github.com/minionsdev/minions/internal/textsafe"
	"github.com/minionsdev/minions/internal/units"
	"github.com/minionsdev/minions/service"
)

// detailPage shows one VM: its settings, agent status, URL, snapshots and
// the tail of its console. Action keys work as on the list.
type detailPage struct {
	c             *common
	name          string
	d             *Detail
	err           error
	width, height int
}

func newDetailPage(c *common, name string) *detailPage {
	return &detailPage{c: c, name: name}
}

func (p *detailPage) Init() tea.Cmd { return p.refresh() }

func (p *detailPage) refresh() tea.Cmd {
	c, name := p.c, p.name
	return func() tea.Msg {
		d, err := loadDetail(c.ctx, c.backend, c.url, name)
		return detailMsg{name: name, detail: d, err: err}
	}
}

func (p *detailPage) Title() string    { return p.name }
func (p *detailPage) Capturing() bool  { return false }
func (p *detailPage) SetSize(w, h int) { p.width, p.height = w, h }

func (p *detailPage) vm() *service.VM {
	if p.d == nil {
		return nil
	}
	v := p.d.VM
	return &v
}

func (p *detailPage) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case detailMsg:
		if msg.name != p.name {
			return nil
		}
		p.err = msg.err
		if msg.err == nil {
			d := msg.detail
			p.d = &d
		}
	case opDoneMsg:
		if msg.err != nil || msg.name != p.name {
			return nil
		}
		switch msg.verb {
		case "destroy":
			return p.c.closePage(p)
		case "rename":
			p.name = msg.to
			if p.d != nil {
				p.d.VM.Name = msg.to
			}
			return p.refresh()
		}
	case tea.KeyMsg:
		k := p.c.keys
		switch {
		case key.Matches(msg, k.Back):
			return p.c.back()
		case key.Matches(msg, k.Open):
			return nil
		}
		if cmd, ok := p.c.vmAction(msg, p.vm()); ok {
			return cmd
		}
	}
	return nil
}

func (p *detailPage) View() string {
	st := p.c.styles
	if p.d == nil {
		if p.err != nil {
			return st.Error.Render(errorText(p.err))
		}
		return st.Dim.Render("Loading " + p.name + "…")
	}
	d, v := p.d, p.d.VM
	var lines []string
	kv := func(pairs ...string) {
		if len(pairs) > 2 && 26*len(pairs)/2 > p.width { // one pair per line
			for i := 0; i+1 < len(pairs); i += 2 {
				lines = append(lines, st.Label.Render(fmt.Sprintf("%-8s", pairs[i]))+" "+st.Value.Render(pairs[i+1]))
			}
			return
		}
		var b strings.Builder
		for i := 0; i+1 < len(pairs); i += 2 {
			v := pairs[i+1]
			if i+2 < len(pairs) {
				v = padRight(v, 16) + "  "
			}
			b.WriteString(st.Label.Render(fmt.Sprintf("%-8s", pairs[i])) + " " + st.Value.Render(v))
		}
		lines = append(lines, b.String())
	}
	title := st.Title.Render(v.Name) + "  " + st.statusStyle(v.Status).Render(v.Status)
	if p.err != nil {
		title += "  " + st.Error.Render("(stale: "+errorText(p.err)+")")
	}
	lines = append(lines, title)
	kv("ID", v.ID, "Image", orDash(v.Image))
	kv("IP", orDash(v.IP), "URL", orDash(d.URL))
	kv("CPUs", fmt.Sprint(v.CPUs), "Memory", fmtMemory(v.MemoryMiB), "Disk", fmtDisk(v.DiskGiB))
	created := "-"
	if !v.CreatedAt.IsZero() {
		created = v.CreatedAt.UTC().Format("2006-01-02 15:04")
	}
	kv("Created", created, "Age", fmtDuration(p.c.now().Sub(v.CreatedAt)), "Uptime", p.c.uptime(v))
	if p.c.admin {
		kv("Owner", orDash(v.Owner))
	}
	if v.Restart != "" {
		kv("Restart", v.Restart, "Restarts", fmt.Sprint(v.Restarts))
	}
	lines = append(lines, "", st.Section.Render("Agent"))
	switch a := d.Agent; {
	case a != nil:
		// Version, kernel and errors come from the guest: no terminal
		// control reaches the screen (textsafe).
		uptime := time.Duration(a.UptimeS * float64(time.Second))
		lines = append(lines, "  "+fmt.Sprintf("connected · %s · kernel %s · up %s · load %.2f %.2f %.2f",
			orDash(textsafe.Clean(a.AgentVersion)), orDash(textsafe.Clean(a.Kernel)), fmtDuration(uptime), a.Load[0], a.Load[1], a.Load[2]))
		lines = append(lines, "  "+fmt.Sprintf("memory %s free of %s · disk %s free of %s",
			units.Bytes(a.MemAvailable), units.Bytes(a.MemTotal), units.Bytes(a.DiskFree), units.Bytes(a.DiskTotal)))
	case d.AgentErr != "":
		lines = append(lines, "  "+st.Dim.Render("not connected: "+textsafe.Clean(d.AgentErr)))
	default:
		lines = append(lines, "  "+st.Dim.Render("not connected"))
	}
	lines = append(lines, "", st.Section.Render(fmt.Sprintf("Snapshots (%d)", len(d.Snapshots))))
	if len(d.Snapshots) == 0 {
		lines = append(lines, "  "+st.Dim.Render("none · p to take one"))
	}
	const maxSnaps = 3
	for i, s := range d.Snapshots {
		if i == maxSnaps {
			lines = append(lines, "  "+st.Dim.Render(fmt.Sprintf("… %d more · p to manage", len(d.Snapshots)-maxSnaps)))
			break
		}
		lines = append(lines, "  "+snapLine(p.c, s))
	}
	if len(d.Events) > 0 {
		lines = append(lines, "", st.Section.Render("Recent events"))
		for _, e := range d.Events {
			lines = append(lines, "  "+ansi.Truncate(textsafe.Clean(fmt.Sprintf("%s · %s · %s %s",
				e.At.UTC().Format("2006-01-02 15:04:05"), e.Actor, e.Kind, e.Message)), max(p.width-2, 0), "…"))
		}
	}
	lines = append(lines, "", st.Section.Render("Console"))
	room := p.height - len(lines)
	tail := d.ConsoleTail
	if room < len(tail) {
		tail = tail[len(tail)-max(room, 0):]
	}
	if len(d.ConsoleTail) == 0 {
		lines = append(lines, "  "+st.Dim.Render("(no output)"))
	}
	for _, l := range tail {
		lines = append(lines, "  "+st.Console.Render(ansi.Truncate(textsafe.Clean(l), max(p.width-2, 0), "…")))
	}
	return strings.Join(lines, "\n")
}

func snapLine(c *common, s service.Snapshot) string {
	return fmt.Sprintf("%s · %s · %s · %s", s.Name, s.CreatedAt.UTC().Format("2006-01-02 15:04"),
		units.Bytes(s.SizeBytes), snapKind(s))
}

func fmtDisk(gib int) string {
	if gib <= 0 {
		return "-"
	}
	return fmt.Sprintf("%dG", gib)
}

func (p *detailPage) ShortHelp() []key.Binding {
	return append([]key.Binding{p.c.keys.Back}, p.c.vmKeys(p.vm())...)
}

func (p *detailPage) FullHelp() [][]key.Binding {
	k := p.c.keys
	return [][]key.Binding{{k.Back}, p.c.vmHelp(), {k.Help, k.Quit, k.ForceQuit}}
}
