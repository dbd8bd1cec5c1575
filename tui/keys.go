package tui

import (
	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/minionsdev/minions/tui/widget"
)

// KeyMap is every key binding of the dashboard. Pages enable the ones that
// apply to the current selection, so the footer shows only those.
type KeyMap struct {
	TableKeys
	Open, Back, Filter    key.Binding
	Help, Quit, ForceQuit key.Binding

	Create, Start, Stop, Restart key.Binding
	Resize, Snapshots, Rename    key.Binding
	Copy, Destroy, Console       key.Binding
	Fork                         key.Binding // running VMs only

	// Forms and dialogs.
	NextField, PrevField, Submit key.Binding
	Yes, No                      key.Binding
	// Snapshots page.
	SnapNew, SnapRestore, SnapDelete key.Binding
	// Hosts page (admins): open it from the list, cordon, uncordon.
	Hosts, HostCordon, HostUncordon key.Binding
}

// TableKeys move the cursor of a table: the one table-navigation keymap,
// the same on every page that shows one.
type TableKeys struct {
	Up, Down, Top, Bottom key.Binding
}

// navigate moves t's cursor when msg is a table key and reports whether
// it was one.
func (k TableKeys) navigate(msg tea.KeyMsg, t *widget.Table) bool {
	switch {
	case key.Matches(msg, k.Up):
		t.Move(-1)
	case key.Matches(msg, k.Down):
		t.Move(1)
	case key.Matches(msg, k.Top):
		t.Top()
	case key.Matches(msg, k.Bottom):
		t.Bottom()
	default:
		return false
	}
	return true
}

// help lists the table keys, then more, for a help group.
func (k TableKeys) help(more ...key.Binding) []key.Binding {
	return append([]key.Binding{k.Up, k.Down, k.Top, k.Bottom}, more...)
}

// ConsoleDetachKey is the byte that detaches a console (ctrl+]).
const ConsoleDetachKey = 0x1d

// DefaultKeyMap returns the dashboard's keys.
func DefaultKeyMap() KeyMap {
	b := func(keys []string, k, desc string) key.Binding {
		return key.NewBinding(key.WithKeys(keys...), key.WithHelp(k, desc))
	}
	return KeyMap{
		TableKeys: TableKeys{
			Up:     b([]string{"up", "k"}, "↑/k", "up"),
			Down:   b([]string{"down", "j"}, "↓/j", "down"),
			Top:    b([]string{"g", "home"}, "g", "top"),
			Bottom: b([]string{"G", "end"}, "G", "bottom"),
		},
		Open:      b([]string{"enter"}, "enter", "details"),
		Back:      b([]string{"esc"}, "esc", "back"),
		Filter:    b([]string{"/"}, "/", "filter"),
		Help:      b([]string{"?"}, "?", "help"),
		Quit:      b([]string{"q"}, "q", "quit"),
		ForceQuit: b([]string{"ctrl+c"}, "ctrl+c", "quit"),

		Create:    b([]string{"n"}, "n", "new"),
		Start:     b([]string{"s"}, "s", "start"),
		Stop:      b([]string{"x"}, "x", "stop"),
		Restart:   b([]string{"r"}, "r", "restart"),
		Resize:    b([]string{"z"}, "z", "resize"),
		Snapshots: b([]string{"p"}, "p", "snapshots"),
		Rename:    b([]string{"e"}, "e", "rename"),
		Copy:      b([]string{"y"}, "y", "copy"),
		Fork:      b([]string{"f"}, "f", "fork"),
		Destroy:   b([]string{"d"}, "d", "destroy"),
		Console:   b([]string{"t"}, "t", "console (ctrl+] back)"),

		NextField: b([]string{"tab", "down"}, "tab", "next"),
		PrevField: b([]string{"shift+tab", "up"}, "shift+tab", "prev"),
		Submit:    b([]string{"enter"}, "enter", "submit"),
		Yes:       b([]string{"y", "Y"}, "y", "yes"),
		No:        b([]string{"n", "N", "esc"}, "n/esc", "no"),

		SnapNew:     b([]string{"n"}, "n", "new snapshot"),
		SnapRestore: b([]string{"enter", "r"}, "enter/r", "restore"),
		SnapDelete:  b([]string{"d"}, "d", "delete"),

		Hosts:        b([]string{"h"}, "h", "hosts"),
		HostCordon:   b([]string{"c"}, "c", "cordon"),
		HostUncordon: b([]string{"u"}, "u", "uncordon"),
	}
}
