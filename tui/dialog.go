package tui

import (
	"strings"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
)

// confirmPage asks a yes/no question; yes runs onYes, anything in No
// (n, esc) cancels. The default is no.
type confirmPage struct {
	c        *common
	question string
	detail   string
	onYes    tea.Cmd
	w, h     int
}

func newConfirmPage(c *common, question, detail string, onYes tea.Cmd) *confirmPage {
	return &confirmPage{c: c, question: question, detail: detail, onYes: onYes}
}

func (p *confirmPage) Init() tea.Cmd    { return nil }
func (p *confirmPage) Title() string    { return "confirm" }
func (p *confirmPage) Capturing() bool  { return false }
func (p *confirmPage) SetSize(w, h int) { p.w, p.h = w, h }

func (p *confirmPage) Update(msg tea.Msg) tea.Cmd {
	km, ok := msg.(tea.KeyMsg)
	if !ok {
		return nil
	}
	switch {
	case key.Matches(km, p.c.keys.Yes):
		return tea.Batch(p.c.back(), p.onYes)
	case key.Matches(km, p.c.keys.No):
		return tea.Batch(p.c.back(), status("cancelled"))
	}
	return nil
}

func (p *confirmPage) View() string {
	st := p.c.styles
	body := st.Title.Render(p.question)
	if p.detail != "" {
		body += "\n\n" + p.detail
	}
	body += "\n\n" + st.Dim.Render("y yes · n no")
	box := st.Dialog.Width(min(56, max(p.w-4, 20))).Render(body)
	return lipgloss.Place(p.w, p.h, lipgloss.Center, lipgloss.Center, box)
}

func (p *confirmPage) ShortHelp() []key.Binding {
	return []key.Binding{p.c.keys.Yes, p.c.keys.No}
}

func (p *confirmPage) FullHelp() [][]key.Binding {
	return [][]key.Binding{p.ShortHelp()}
}

// helpPage shows every key of the page it was opened from.
type helpPage struct {
	c    *common
	of   page
	w, h int
}

func newHelpPage(c *common, of page) *helpPage { return &helpPage{c: c, of: of} }

func (p *helpPage) Init() tea.Cmd    { return nil }
func (p *helpPage) Title() string    { return "help" }
func (p *helpPage) Capturing() bool  { return false }
func (p *helpPage) SetSize(w, h int) { p.w, p.h = w, h }

func (p *helpPage) Update(msg tea.Msg) tea.Cmd {
	if km, ok := msg.(tea.KeyMsg); ok && key.Matches(km, p.c.keys.Back) {
		return p.c.back()
	}
	return nil
}

func (p *helpPage) View() string {
	st := p.c.styles
	var b strings.Builder
	b.WriteString(st.Title.Render("Keys") + "\n\n")
	// One binding per line in columns: robust on narrow terminals.
	groups := p.of.FullHelp()
	var cols []string
	for _, g := range groups {
		var lines []string
		for _, k := range g {
			if !k.Enabled() {
				continue
			}
			h := k.Help()
			lines = append(lines, st.Help.FullKey.Render(padRight(h.Key, 9))+" "+st.Help.FullDesc.Render(h.Desc))
		}
		cols = append(cols, strings.Join(lines, "\n"))
	}
	row := lipgloss.JoinHorizontal(lipgloss.Top, withGaps(cols)...)
	if lipgloss.Width(row) > p.w {
		row = strings.Join(cols, "\n\n")
	}
	b.WriteString(row)
	b.WriteString("\n\n" + st.Dim.Render("In a console, ctrl+] returns to the dashboard."))
	return b.String()
}

func withGaps(cols []string) []string {
	out := make([]string, 0, 2*len(cols))
	for i, c := range cols {
		if i > 0 {
			out = append(out, "    ")
		}
		out = append(out, c)
	}
	return out
}

func padRight(s string, w int) string {
	if n := lipgloss.Width(s); n < w {
		return s + strings.Repeat(" ", w-n)
	}
	return s
}

func (p *helpPage) ShortHelp() []key.Binding {
	return []key.Binding{p.c.keys.Back}
}

func (p *helpPage) FullHelp() [][]key.Binding { return [][]key.Binding{p.ShortHelp()} }
