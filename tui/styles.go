package tui

import (
	"github.com/charmbracelet/bubbles/help"
	"github.com/charmbracelet/lipgloss"
	"github.com/minionsdev/minions/tui/widget"
)

// Styles are every style the dashboard uses, built from one session's
// renderer so that its colour profile and background apply.
type Styles struct {
	App       lipgloss.Style
	Header    lipgloss.Style
	HeaderDim lipgloss.Style
	Title     lipgloss.Style
	Label     lipgloss.Style
	Value     lipgloss.Style
	Dim       lipgloss.Style
	Section   lipgloss.Style
	Box       lipgloss.Style
	Dialog    lipgloss.Style
	Info      lipgloss.Style
	Error     lipgloss.Style
	Status    map[string]lipgloss.Style
	Console   lipgloss.Style

	Table widget.TableStyles
	Form  widget.FormStyles
	Help  help.Styles
}

// NewStyles builds the styles on r.
func NewStyles(r *lipgloss.Renderer) *Styles {
	accent := lipgloss.AdaptiveColor{Light: "#5A56E0", Dark: "#7571F9"}
	dim := lipgloss.AdaptiveColor{Light: "#9B9B9B", Dark: "#5C5C5C"}
	green := lipgloss.AdaptiveColor{Light: "#02A35B", Dark: "#04B575"}
	red := lipgloss.AdaptiveColor{Light: "#D7263D", Dark: "#FF5F87"}
	yellow := lipgloss.AdaptiveColor{Light: "#B58900", Dark: "#FFD75F"}

	s := &Styles{
		App:       r.NewStyle(),
		Header:    r.NewStyle().Bold(true).Foreground(accent),
		HeaderDim: r.NewStyle().Foreground(dim),
		Title:     r.NewStyle().Bold(true),
		Label:     r.NewStyle().Foreground(dim),
		Value:     r.NewStyle(),
		Dim:       r.NewStyle().Foreground(dim),
		Section:   r.NewStyle().Bold(true).Foreground(accent),
		Box:       r.NewStyle().Border(lipgloss.NormalBorder()).BorderForeground(dim).Padding(0, 1),
		Dialog:    r.NewStyle().Border(lipgloss.RoundedBorder()).BorderForeground(accent).Padding(0, 1),
		Info:      r.NewStyle().Foreground(green),
		Error:     r.NewStyle().Foreground(red).Bold(true),
		Console:   r.NewStyle().Foreground(dim),
		Status: map[string]lipgloss.Style{
			StatusRunning:  r.NewStyle().Foreground(green),
			StatusStopped:  r.NewStyle().Foreground(dim),
			StatusStarting: r.NewStyle().Foreground(yellow),
			StatusStopping: r.NewStyle().Foreground(yellow),
			StatusCreating: r.NewStyle().Foreground(yellow),
			StatusError:    r.NewStyle().Foreground(red),
		},
		Table: widget.TableStyles{
			Header:   r.NewStyle().Bold(true).Foreground(dim),
			Cell:     r.NewStyle(),
			Selected: r.NewStyle().Bold(true).Foreground(accent),
			Cursor:   r.NewStyle().Foreground(accent),
			Empty:    r.NewStyle().Foreground(dim),
		},
		Form: widget.FormStyles{
			Label:        r.NewStyle().Foreground(dim),
			FocusedLabel: r.NewStyle().Bold(true).Foreground(accent),
			Text:         r.NewStyle(),
			Placeholder:  r.NewStyle().Foreground(dim),
			Cursor:       r.NewStyle().Reverse(true),
			Choice:       r.NewStyle(),
			Chosen:       r.NewStyle().Bold(true).Foreground(accent),
			Hint:         r.NewStyle().Foreground(dim),
			Error:        r.NewStyle().Foreground(red),
		},
	}
	keyStyle := r.NewStyle().Foreground(accent)
	descStyle := r.NewStyle().Foreground(dim)
	sepStyle := r.NewStyle().Foreground(dim)
	s.Help = help.Styles{
		Ellipsis:       sepStyle,
		ShortKey:       keyStyle,
		ShortDesc:      descStyle,
		ShortSeparator: sepStyle,
		FullKey:        keyStyle,
		FullDesc:       descStyle,
		FullSeparator:  sepStyle,
	}
	return s
}

// statusStyle returns the style for a VM status word.
func (s *Styles) statusStyle(status string) lipgloss.Style {
	if st, ok := s.Status[status]; ok {
		return st
	}
	return s.Value
}
