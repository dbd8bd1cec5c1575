package tui_test

import (
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"github.com/minionsdev/minions/tui"
	"github.com/minionsdev/minions/tui/tuitest"
	"github.com/muesli/termenv"
)

// asciiRenderer renders without colour or attributes, for golden frames.
func asciiRenderer() *lipgloss.Renderer {
	r := lipgloss.NewRenderer(io.Discard)
	r.SetColorProfile(termenv.Ascii)
	return r
}

func testOptions(f *tuitest.Fake, w, h int) tui.Options {
	return tui.Options{
		Backend:  f,
		Renderer: asciiRenderer(),
		User:     "alice",
		Width:    w,
		Height:   h,
		Refresh:  -1, // no live refresh during a test
		Now:      f.Now,
		URL:      f.URL,
	}
}

func newModel(t *testing.T, f *tuitest.Fake, w, h int) *tui.Model {
	t.Helper()
	m, err := tui.New(testOptions(f, w, h))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// driver runs a model synchronously: it feeds messages to Update and runs
// the returned commands, feeding their messages back, until nothing is
// left. Live refresh is off, so every command returns promptly.
type driver struct {
	t    *testing.T
	m    tea.Model
	quit bool
}

func newDriver(t *testing.T, m tea.Model) *driver {
	d := &driver{t: t, m: m}
	d.run(m.Init())
	return d
}

func (d *driver) send(msg tea.Msg) {
	d.t.Helper()
	var cmd tea.Cmd
	d.m, cmd = d.m.Update(msg)
	d.run(cmd)
}

func (d *driver) run(cmd tea.Cmd) {
	if cmd == nil {
		return
	}
	ch := make(chan tea.Msg, 1)
	go func() { ch <- cmd() }()
	var msg tea.Msg
	select {
	case msg = <-ch:
	case <-time.After(10 * time.Second):
		d.t.Fatal("command did not return")
	}
	switch msg := msg.(type) {
	case nil:
	case tea.BatchMsg:
		for _, c := range msg {
			d.run(c)
		}
	case tea.QuitMsg:
		d.quit = true
	default:
		// tea.Sequence's message is an unexported []tea.Cmd: run them in
		// order, as the program does.
		if v := reflect.ValueOf(msg); v.Kind() == reflect.Slice && v.Type().Elem() == reflect.TypeOf(tea.Cmd(nil)) {
			for i := 0; i < v.Len(); i++ {
				d.run(v.Index(i).Interface().(tea.Cmd))
			}
			return
		}
		d.send(msg)
	}
}

// keys sends each key: names like "enter", "esc", "ctrl+u", "tab" or
// single runes; "type:text" types text rune by rune.
func (d *driver) keys(keys ...string) {
	d.t.Helper()
	for _, k := range keys {
		if s, ok := strings.CutPrefix(k, "type:"); ok {
			for _, r := range s {
				d.send(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{r}})
			}
			continue
		}
		d.send(keyMsg(k))
	}
}

func keyMsg(k string) tea.KeyMsg {
	switch k {
	case "enter":
		return tea.KeyMsg{Type: tea.KeyEnter}
	case "esc":
		return tea.KeyMsg{Type: tea.KeyEsc}
	case "tab":
		return tea.KeyMsg{Type: tea.KeyTab}
	case "shift+tab":
		return tea.KeyMsg{Type: tea.KeyShiftTab}
	case "up":
		return tea.KeyMsg{Type: tea.KeyUp}
	case "down":
		return tea.KeyMsg{Type: tea.KeyDown}
	case "left":
		return tea.KeyMsg{Type: tea.KeyLeft}
	case "right":
		return tea.KeyMsg{Type: tea.KeyRight}
	case "backspace":
		return tea.KeyMsg{Type: tea.KeyBackspace}
	case "ctrl+u":
		return tea.KeyMsg{Type: tea.KeyCtrlU}
	case "space":
		return tea.KeyMsg{Type: tea.KeySpace, Runes: []rune{' '}}
	case "ctrl+c":
		return tea.KeyMsg{Type: tea.KeyCtrlC}
	}
	return tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(k)}
}

func (d *driver) view() string { return d.m.View() }
