package widget

import (
	"strings"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
)

// FormStyles style a Form.
type FormStyles struct {
	Label        lipgloss.Style
	FocusedLabel lipgloss.Style
	Text         lipgloss.Style
	Placeholder  lipgloss.Style
	Cursor       lipgloss.Style
	Choice       lipgloss.Style
	Chosen       lipgloss.Style
	Hint         lipgloss.Style
	Error        lipgloss.Style
}

// FormKeys are the keys a Form reacts to.
type FormKeys struct {
	Next, Prev, Submit, Cancel key.Binding
	Left, Right                key.Binding
}

// Field is one form field: a text input, or a choice when Choices is set.
type Field struct {
	Label string
	Hint  string
	// Choices makes the field a choice (left/right to change).
	Choices []string
	// Validate checks the value on submit; nil accepts anything.
	Validate func(string) error

	input  Input
	choice int
	err    error
}

// NewTextField returns a text field with an initial value.
func NewTextField(label, value, placeholder string, limit int, validate func(string) error) *Field {
	f := &Field{Label: label, Validate: validate}
	f.input.Placeholder = placeholder
	f.input.Limit = limit
	f.input.SetValue(value)
	return f
}

// NewChoiceField returns a choice field with choices[selected] chosen.
func NewChoiceField(label string, choices []string, selected int) *Field {
	if selected < 0 || selected >= len(choices) {
		selected = 0
	}
	return &Field{Label: label, Choices: choices, choice: selected}
}

// Value returns the field's text or chosen choice.
func (f *Field) Value() string {
	if f.Choices != nil {
		if len(f.Choices) == 0 {
			return ""
		}
		return f.Choices[f.choice]
	}
	return f.input.trimmed()
}

// Err returns the field's validation error from the last submit.
func (f *Field) Err() error { return f.err }

// FormResult is what a key did to a form.
type FormResult int

// Form results.
const (
	FormContinue FormResult = iota
	FormSubmit              // every field is valid; read the values
	FormCancel
)

// Form is a vertical list of fields with one focused.
type Form struct {
	Title  string
	Fields []*Field
	Styles FormStyles
	Keys   FormKeys

	focus int
	width int
}

// NewForm returns a form focused on its first field.
func NewForm(title string, styles FormStyles, keys FormKeys, fields ...*Field) *Form {
	f := &Form{Title: title, Fields: fields, Styles: styles, Keys: keys}
	for _, fl := range fields {
		fl.input.TextStyle = styles.Text
		fl.input.PlaceholderStyle = styles.Placeholder
		fl.input.CursorStyle = styles.Cursor
	}
	f.setFocus(0)
	return f
}

// SetWidth sets the width available to the form.
func (f *Form) SetWidth(w int) {
	f.width = w
	for _, fl := range f.Fields {
		fl.input.Width = max(w-labelWidth(f.Fields)-4, 4)
	}
}

// Focused returns the index of the focused field.
func (f *Form) Focused() int { return f.focus }

func (f *Form) setFocus(i int) {
	f.focus = (i + len(f.Fields)) % max(len(f.Fields), 1)
	for j, fl := range f.Fields {
		if j == f.focus && fl.Choices == nil {
			fl.input.Focus()
		} else {
			fl.input.Blur()
		}
	}
}

// Update handles a message and reports whether the form was submitted
// (all fields valid) or cancelled.
func (f *Form) Update(msg tea.Msg) (FormResult, tea.Cmd) {
	km, ok := msg.(tea.KeyMsg)
	if !ok || len(f.Fields) == 0 {
		return FormContinue, nil
	}
	cur := f.Fields[f.focus]
	switch {
	case key.Matches(km, f.Keys.Cancel):
		return FormCancel, nil
	case key.Matches(km, f.Keys.Submit):
		if f.focus < len(f.Fields)-1 {
			f.setFocus(f.focus + 1)
			return FormContinue, nil
		}
		if f.validate() {
			return FormSubmit, nil
		}
		return FormContinue, nil
	case key.Matches(km, f.Keys.Next):
		f.setFocus(f.focus + 1)
		return FormContinue, nil
	case key.Matches(km, f.Keys.Prev):
		f.setFocus(f.focus - 1)
		return FormContinue, nil
	}
	if cur.Choices != nil {
		switch {
		case key.Matches(km, f.Keys.Left):
			cur.choice = (cur.choice - 1 + len(cur.Choices)) % max(len(cur.Choices), 1)
		case key.Matches(km, f.Keys.Right):
			cur.choice = (cur.choice + 1) % max(len(cur.Choices), 1)
		}
		return FormContinue, nil
	}
	if cur.input.Update(km) {
		cur.err = nil
	}
	return FormContinue, nil
}

// validate runs every field's validation, focusing the first invalid one.
func (f *Form) validate() bool {
	first := -1
	for i, fl := range f.Fields {
		fl.err = nil
		if fl.Validate != nil {
			fl.err = fl.Validate(fl.Value())
		}
		if fl.err != nil && first < 0 {
			first = i
		}
	}
	if first >= 0 {
		f.setFocus(first)
		return false
	}
	return true
}

func labelWidth(fields []*Field) int {
	w := 0
	for _, fl := range fields {
		w = max(w, lipgloss.Width(fl.Label))
	}
	return w
}

// View renders the form.
func (f *Form) View() string {
	lw := labelWidth(f.Fields)
	var b strings.Builder
	if f.Title != "" {
		b.WriteString(f.Title + "\n\n")
	}
	for i, fl := range f.Fields {
		ls := f.Styles.Label
		marker := "  "
		if i == f.focus {
			ls = f.Styles.FocusedLabel
			marker = "› "
		}
		b.WriteString(ls.Render(marker + fl.Label + strings.Repeat(" ", lw-lipgloss.Width(fl.Label)) + "  "))
		if fl.Choices != nil {
			b.WriteString(f.choiceView(fl, i == f.focus))
		} else {
			b.WriteString(fl.input.View())
		}
		if fl.err != nil {
			b.WriteString("\n" + strings.Repeat(" ", lw+4) + f.Styles.Error.Render(fl.err.Error()))
		} else if fl.Hint != "" && i == f.focus {
			b.WriteString("\n" + strings.Repeat(" ", lw+4) + f.Styles.Hint.Render(fl.Hint))
		}
		if i < len(f.Fields)-1 {
			b.WriteString("\n")
		}
	}
	return b.String()
}

func (f *Form) choiceView(fl *Field, focused bool) string {
	if len(fl.Choices) == 0 {
		return f.Styles.Hint.Render("(none)")
	}
	parts := make([]string, len(fl.Choices))
	for i, c := range fl.Choices {
		if i == fl.choice {
			parts[i] = f.Styles.Chosen.Render("[" + c + "]")
		} else {
			parts[i] = f.Styles.Choice.Render(" " + c + " ")
		}
	}
	s := strings.Join(parts, " ")
	if focused {
		s = "‹ " + s + " ›"
	}
	return s
}
