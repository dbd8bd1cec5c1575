package widget

import (
	"strings"
	"testing"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
)

func TestTableLayoutDropsColumnsByPriority(t *testing.T) {
	cols := []Column{
		{Title: "NAME", Width: 6, Flex: true},
		{Title: "A", Width: 5, Priority: 2},
		{Title: "B", Width: 5, Priority: 1},
		{Title: "C", Width: 5, Priority: 3},
	}
	tests := []struct {
		width  int
		titles string
	}{
		{40, "NAME A B C"},
		{30, "NAME A B C"},
		{26, "NAME A B"}, // C (priority 3) goes first
		{20, "NAME B"},
		{10, "NAME"},
		{4, "NAME"}, // priority 0 is never dropped
	}
	for _, tt := range tests {
		tb := Table{Columns: cols}
		tb.SetSize(tt.width, 5)
		head := strings.Split(tb.View(), "\n")[0]
		if got := strings.Join(strings.Fields(head), " "); got != tt.titles {
			t.Errorf("width %d: columns %q, want %q", tt.width, got, tt.titles)
		}
		if len(head) > max(tt.width, 8) {
			t.Errorf("width %d: header %q too wide", tt.width, head)
		}
		// The flex column takes the spare width.
		if tt.width == 40 && !strings.HasPrefix(head, "  NAME"+strings.Repeat(" ", 16)+"A") {
			t.Errorf("width 40: header %q: NAME did not absorb the spare width", head)
		}
	}
}

func TestTableCursorScrolls(t *testing.T) {
	tb := Table{Columns: []Column{{Title: "N", Width: 3}}}
	tb.SetSize(10, 3) // header + 2 rows
	tb.SetRows([][]string{{"a"}, {"b"}, {"c"}, {"d"}})
	steps := []struct {
		move int
		want string
	}{
		{0, "› a  |  b  "},
		{1, "  a  |› b  "},
		{1, "  b  |› c  "},
		{5, "  c  |› d  "},
		{-10, "› a  |  b  "},
	}
	for i, s := range steps {
		tb.Move(s.move)
		lines := strings.Split(tb.View(), "\n")[1:]
		if got := strings.Join(lines, "|"); got != s.want {
			t.Errorf("step %d: %q, want %q", i, got, s.want)
		}
	}
	tb.SetRows(nil)
	if tb.Cursor() != -1 {
		t.Errorf("empty table cursor = %d", tb.Cursor())
	}
}

func TestInput(t *testing.T) {
	runes := func(s string) tea.KeyMsg { return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)} }
	tests := []struct {
		name string
		msgs []tea.KeyMsg
		want string
	}{
		{"type", []tea.KeyMsg{runes("abc")}, "abc"},
		{"backspace", []tea.KeyMsg{runes("abc"), {Type: tea.KeyBackspace}}, "ab"},
		{"insert in middle", []tea.KeyMsg{runes("ac"), {Type: tea.KeyLeft}, runes("b")}, "abc"},
		{"home and delete", []tea.KeyMsg{runes("xab"), {Type: tea.KeyHome}, {Type: tea.KeyDelete}}, "ab"},
		{"ctrl+u clears", []tea.KeyMsg{runes("abc"), {Type: tea.KeyCtrlU}, runes("z")}, "z"},
		{"limit", []tea.KeyMsg{runes("abcdefgh")}, "abcd"},
		{"control runes dropped", []tea.KeyMsg{runes("a\x01b")}, "ab"},
	}
	for _, tt := range tests {
		in := Input{Limit: 4}
		if tt.name != "limit" {
			in.Limit = 0
		}
		in.Focus()
		for _, m := range tt.msgs {
			in.Update(m)
		}
		if in.Value() != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, in.Value(), tt.want)
		}
	}
	var blurred Input
	if blurred.Update(runes("a")) || blurred.Value() != "" {
		t.Error("a blurred input took a key")
	}
}

func TestFormValidatesOnSubmit(t *testing.T) {
	keys := FormKeys{
		Next: key.NewBinding(key.WithKeys("tab")), Prev: key.NewBinding(key.WithKeys("shift+tab")),
		Submit: key.NewBinding(key.WithKeys("enter")), Cancel: key.NewBinding(key.WithKeys("esc")),
		Left: key.NewBinding(key.WithKeys("left")), Right: key.NewBinding(key.WithKeys("right")),
	}
	notEmpty := func(s string) error {
		if s == "" {
			return errEmpty
		}
		return nil
	}
	f := NewForm("t", FormStyles{}, keys, NewTextField("Name", "", "", 10, notEmpty), NewChoiceField("OS", []string{"a", "b"}, 0))
	enter := tea.KeyMsg{Type: tea.KeyEnter}
	if r, _ := f.Update(enter); r != FormContinue || f.Focused() != 1 {
		t.Fatalf("enter on first field: %v focus %d", r, f.Focused())
	}
	f.Update(tea.KeyMsg{Type: tea.KeyRight})
	if r, _ := f.Update(enter); r != FormContinue || f.Focused() != 0 || f.Fields[0].Err() == nil {
		t.Fatalf("submit with empty name: %v focus %d err %v", r, f.Focused(), f.Fields[0].Err())
	}
	f.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune("x")})
	f.Update(tea.KeyMsg{Type: tea.KeyTab})
	if r, _ := f.Update(enter); r != FormSubmit {
		t.Fatalf("valid submit: %v", r)
	}
	if f.Fields[0].Value() != "x" || f.Fields[1].Value() != "b" {
		t.Fatalf("values %q %q", f.Fields[0].Value(), f.Fields[1].Value())
	}
	if r, _ := f.Update(tea.KeyMsg{Type: tea.KeyEsc}); r != FormCancel {
		t.Fatalf("esc: %v", r)
	}
}

type constErr string

func (e constErr) Error() string { return string(e) }

const errEmpty = constErr("empty")
