package tui

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/minionsdev/minions/tui/widget"

	"github.com/minionsdev/minions/service"
)

// Limits the forms check before calling the backend (which checks again).
const (
	maxCPUs      = 64
	maxMemoryMiB = 256 * 1024
	maxDiskGiB   = 4096
)

var nameRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`) })

func validName(s string) error {
	if !nameRE().MatchString(s) || strings.HasSuffix(s, "-") {
		return fmt.Errorf("lowercase letters, digits and -, starting with a letter")
	}
	return nil
}

func intIn(lo, hi int, unit string) func(string) error {
	return func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("a whole number from %d to %d%s", lo, hi, unit)
		}
		return nil
	}
}

func atoi(s string) int { n, _ := strconv.Atoi(s); return n }

func formHelp(c *common) []key.Binding {
	return []key.Binding{
		key.NewBinding(key.WithKeys("tab"), key.WithHelp("tab/↓", "next")),
		key.NewBinding(key.WithKeys("shift+tab"), key.WithHelp("shift+tab/↑", "prev")),
		key.NewBinding(key.WithKeys("enter"), key.WithHelp("enter", "next/submit")),
		c.keys.Back,
	}
}

// formPage is a page around a widget.Form; submit turns the values into a
// command, and the page closes itself unless stay is set.
type formPage struct {
	c      *common
	title  string
	form   *widget.Form
	submit func(f *widget.Form) tea.Cmd
	// extra renders below the form (create progress).
	extra func() string
	busy  bool
	w, h  int
}

func (p *formPage) Init() tea.Cmd   { return nil }
func (p *formPage) Title() string   { return p.title }
func (p *formPage) Capturing() bool { return !p.busy }
func (p *formPage) SetSize(w, h int) {
	p.w, p.h = w, h
	p.form.SetWidth(w)
}

func (p *formPage) Update(msg tea.Msg) tea.Cmd {
	if _, ok := msg.(tea.KeyMsg); !ok {
		return nil
	}
	if p.busy {
		if km := msg.(tea.KeyMsg); key.Matches(km, p.c.keys.Back) {
			return p.c.back() // the operation carries on; the status line reports it
		}
		return nil
	}
	res, cmd := p.form.Update(msg)
	switch res {
	case widget.FormCancel:
		return p.c.back()
	case widget.FormSubmit:
		return p.submit(p.form)
	}
	return cmd
}

func (p *formPage) View() string {
	s := p.form.View()
	if p.extra != nil {
		if e := p.extra(); e != "" {
			s += "\n\n" + e
		}
	}
	return s
}

func (p *formPage) ShortHelp() []key.Binding {
	if p.busy {
		return []key.Binding{key.NewBinding(key.WithKeys("esc"), key.WithHelp("esc", "hide"))}
	}
	return formHelp(p.c)
}

func (p *formPage) FullHelp() [][]key.Binding {
	return [][]key.Binding{formHelp(p.c), {
		key.NewBinding(key.WithKeys("left", "right"), key.WithHelp("←/→", "change choice")),
		key.NewBinding(key.WithKeys("ctrl+u"), key.WithHelp("ctrl+u", "clear field")),
	}}
}

// createPage is the create form (name, CPUs, memory, OS) followed by the
// progress of the creation.
type createPage struct {
	formPage
	images []ImageChoice
	imgErr error
	steps  []string
	name   string
}

func newCreatePage(c *common) *createPage {
	p := &createPage{}
	p.c = c
	p.title = "new"
	p.rebuild(nil)
	p.extra = p.progress
	p.submit = p.start
	return p
}

// rebuild makes the form; called again when the images arrive.
func (p *createPage) rebuild(images []ImageChoice) {
	old := p.form
	var choices []string
	sel := 0
	for i, im := range images {
		choices = append(choices, im.Name)
		if im.Default {
			sel = i
		}
	}
	osField := widget.NewChoiceField("OS", choices, sel)
	switch {
	case images == nil && p.imgErr != nil: // the backend cannot list them: type one
		osField = widget.NewTextField("OS", "", "an image, e.g. minimal", 63, nil)
	case images == nil:
		osField = widget.NewTextField("OS", "", "loading…", 0, nil)
	}
	osField.Validate = func(s string) error {
		if s == "" {
			return fmt.Errorf("no image available")
		}
		return nil
	}
	fields := []*widget.Field{
		widget.NewTextField("Name", "", "e.g. web", 63, validName),
		widget.NewTextField("CPUs", strconv.Itoa(defaultCPUs), "", 3, intIn(1, maxCPUs, "")),
		widget.NewTextField("Memory", strconv.Itoa(defaultMemoryMiB), "", 7, intIn(128, maxMemoryMiB, " MiB")),
		osField,
	}
	fields[2].Hint = "MiB"
	if old != nil { // keep what was typed
		for i := 0; i < 3; i++ {
			fields[i] = old.Fields[i]
		}
	}
	p.form = widget.NewForm("Create a VM", p.c.styles.Form, p.c.formKeys(), fields...)
	if old != nil {
		for i := 0; i < old.Focused(); i++ {
			p.form.Update(tea.KeyMsg{Type: tea.KeyTab})
		}
	}
	p.form.SetWidth(p.w)
}

func (p *createPage) Init() tea.Cmd {
	c := p.c
	return func() tea.Msg {
		ims, err := c.backend.ListImages(c.ctx)
		if err != nil {
			return imagesMsg{err: err}
		}
		return imagesMsg{images: ImageChoices(ims)}
	}
}

func (p *createPage) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case imagesMsg:
		p.imgErr = msg.err
		if msg.err == nil {
			if msg.images == nil {
				msg.images = []ImageChoice{}
			}
			p.images = msg.images
			p.rebuild(msg.images)
		} else if p.images == nil {
			p.rebuild(nil)
		}
		return nil
	case createProgressMsg:
		p.steps = append(p.steps, msg.step)
		return nil
	case opDoneMsg:
		// On success the root model replaces this page by the VM's page.
		if msg.verb == "create" && msg.name == p.name && p.busy && msg.err != nil {
			p.busy = false // let the user fix the form
			p.steps = append(p.steps, "failed: "+errorText(msg.err))
		}
		return nil
	}
	return p.formPage.Update(msg)
}

func (p *createPage) start(f *widget.Form) tea.Cmd {
	req := service.CreateRequest{
		Name:      f.Fields[0].Value(),
		CPUs:      atoi(f.Fields[1].Value()),
		MemoryMiB: atoi(f.Fields[2].Value()),
		Image:     f.Fields[3].Value(),
	}
	p.busy = true
	p.name = req.Name
	p.steps = nil
	ch := make(chan tea.Msg, 16)
	c := p.c
	go func() {
		_, err := c.backend.Create(c.ctx, req, func(step string) {
			select {
			case ch <- createProgressMsg{step: step, ch: ch}:
			case <-c.ctx.Done():
			}
		})
		ch <- opDoneMsg{verb: "create", name: req.Name, err: err, open: req.Name}
		close(ch)
	}()
	return tea.Sequence(status("creating "+req.Name+"…"), listen(ch))
}

// listen returns the next message from ch (nil once ch is closed).
func listen(ch <-chan tea.Msg) tea.Cmd {
	return func() tea.Msg {
		msg, ok := <-ch
		if !ok {
			return nil
		}
		return msg
	}
}

func (p *createPage) progress() string {
	st := p.c.styles
	var lines []string
	if p.imgErr != nil {
		lines = append(lines, st.Error.Render("images: "+errorText(p.imgErr)))
	}
	for i, s := range p.steps {
		mark := "✓ "
		if i == len(p.steps)-1 && p.busy {
			mark = "… "
		}
		lines = append(lines, st.Dim.Render(mark)+s)
	}
	return strings.Join(lines, "\n")
}

// newResizePage edits CPUs, memory and disk of v.
func newResizePage(c *common, v service.VM) *formPage {
	p := &formPage{c: c, title: "resize"}
	fields := []*widget.Field{
		widget.NewTextField("CPUs", strconv.Itoa(v.CPUs), "", 3, intIn(1, maxCPUs, "")),
		widget.NewTextField("Memory", strconv.Itoa(v.MemoryMiB), "", 7, intIn(128, maxMemoryMiB, " MiB")),
		widget.NewTextField("Disk", strconv.Itoa(v.DiskGiB), "", 5, intIn(max(v.DiskGiB, 1), maxDiskGiB, " GiB (disks only grow)")),
	}
	fields[1].Hint = "MiB"
	fields[2].Hint = "GiB; disks only grow"
	title := "Resize " + v.Name
	if v.Status == StatusRunning {
		title += " (may need a restart to apply)"
	}
	p.form = widget.NewForm(title, c.styles.Form, c.formKeys(), fields...)
	p.submit = func(f *widget.Form) tea.Cmd {
		req := service.ResizeRequest{}
		if n := atoi(f.Fields[0].Value()); n != v.CPUs {
			req.CPUs = n
		}
		if n := atoi(f.Fields[1].Value()); n != v.MemoryMiB {
			req.MemoryMiB = n
		}
		if n := atoi(f.Fields[2].Value()); n != v.DiskGiB {
			req.DiskGiB = n
		}
		if req == (service.ResizeRequest{}) {
			return tea.Batch(p.c.back(), status("nothing to change"))
		}
		name := v.Name
		return tea.Sequence(p.c.back(), status("resizing "+name+"…"), c.op("resize", name, func(ctx context.Context) error {
			_, err := c.backend.Resize(ctx, name, req)
			return err
		}))
	}
	return p
}

// newPromptPage asks for one name (rename, copy, snapshot).
func newPromptPage(c *common, title, heading, label, value string, done func(string) tea.Cmd) *formPage {
	p := &formPage{c: c, title: title}
	p.form = widget.NewForm(heading, c.styles.Form, c.formKeys(),
		widget.NewTextField(label, value, "", 63, validName))
	p.submit = func(f *widget.Form) tea.Cmd {
		return tea.Batch(p.c.back(), done(f.Fields[0].Value()))
	}
	return p
}
