package widget

import (
	"strings"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
)

// Input is a one-line text input: printable runes insert, backspace/delete
// erase, left/right/home/end (ctrl+a, ctrl+e) move, ctrl+u clears. It draws
// a static cursor (no blinking, so frames are deterministic).
type Input struct {
	Placeholder string
	Limit       int // maximum runes; 0 means 256
	Width       int // visible cells; 0 means unlimited

	TextStyle, PlaceholderStyle, CursorStyle lipgloss.Style

	value   []rune
	pos     int
	focused bool
}

// SetValue replaces the text and moves the cursor to its end.
func (in *Input) SetValue(s string) {
	in.value = []rune(s)
	if l := in.limit(); len(in.value) > l {
		in.value = in.value[:l]
	}
	in.pos = len(in.value)
}

// Value returns the text.
func (in *Input) Value() string { return string(in.value) }

// Focus shows the cursor and accepts keys.
func (in *Input) Focus() { in.focused = true }

// Blur hides the cursor and ignores keys.
func (in *Input) Blur() { in.focused = false }

// Focused reports whether the input has focus.
func (in *Input) Focused() bool { return in.focused }

func (in *Input) limit() int {
	if in.Limit > 0 {
		return in.Limit
	}
	return 256
}

// Update applies one key; it reports whether the text changed.
func (in *Input) Update(msg tea.Msg) bool {
	km, ok := msg.(tea.KeyMsg)
	if !ok || !in.focused {
		return false
	}
	switch km.Type {
	case tea.KeyRunes, tea.KeySpace:
		r := km.Runes
		if km.Type == tea.KeySpace {
			r = []rune{' '}
		}
		var clean []rune
		for _, c := range r {
			if c >= 0x20 && c != 0x7f {
				clean = append(clean, c)
			}
		}
		if room := in.limit() - len(in.value); len(clean) > room {
			clean = clean[:max(room, 0)]
		}
		if len(clean) == 0 {
			return false
		}
		v := make([]rune, 0, len(in.value)+len(clean))
		v = append(v, in.value[:in.pos]...)
		v = append(v, clean...)
		v = append(v, in.value[in.pos:]...)
		in.value = v
		in.pos += len(clean)
		return true
	case tea.KeyBackspace:
		if in.pos > 0 {
			in.value = append(in.value[:in.pos-1], in.value[in.pos:]...)
			in.pos--
			return true
		}
	case tea.KeyDelete:
		if in.pos < len(in.value) {
			in.value = append(in.value[:in.pos], in.value[in.pos+1:]...)
			return true
		}
	case tea.KeyLeft:
		in.pos = max(in.pos-1, 0)
	case tea.KeyRight:
		in.pos = min(in.pos+1, len(in.value))
	case tea.KeyHome, tea.KeyCtrlA:
		in.pos = 0
	case tea.KeyEnd, tea.KeyCtrlE:
		in.pos = len(in.value)
	case tea.KeyCtrlU:
		changed := len(in.value) > 0
		in.value, in.pos = nil, 0
		return changed
	}
	return false
}

// View renders the input.
func (in *Input) View() string {
	if len(in.value) == 0 {
		if !in.focused {
			return in.PlaceholderStyle.Render(in.Placeholder)
		}
		ph := []rune(in.Placeholder)
		if len(ph) == 0 {
			return in.CursorStyle.Render(" ")
		}
		return in.CursorStyle.Render(string(ph[0])) + in.PlaceholderStyle.Render(string(ph[1:]))
	}
	before, after := string(in.value[:in.pos]), string(in.value[in.pos:])
	if in.Width > 0 {
		// Keep the cursor visible: show the tail of what precedes it.
		if w := ansi.StringWidth(before); w >= in.Width {
			before = ansi.TruncateLeft(before, w-in.Width+1, "")
		}
		after = ansi.Truncate(after, max(in.Width-ansi.StringWidth(before)-1, 0), "")
	}
	if !in.focused {
		return in.TextStyle.Render(before + after)
	}
	at := " "
	if after != "" {
		r := []rune(after)
		at, after = string(r[0]), string(r[1:])
	}
	return in.TextStyle.Render(before) + in.CursorStyle.Render(at) + in.TextStyle.Render(after)
}

// trimmed returns the value without surrounding blanks.
func (in *Input) trimmed() string { return strings.TrimSpace(in.Value()) }
