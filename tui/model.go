package tui

import (
	"fmt"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/x/ansi"
)

// Minimum terminal size; below it the dashboard asks for a bigger window.
const (
	MinWidth  = 40
	MinHeight = 10
)

// page is one screen. Pages are pointers updated in place; Update returns
// the commands to run. The root model sends key messages to the top page
// only and every other message to all pages, so pages below the top stay
// current.
type page interface {
	Init() tea.Cmd
	Update(msg tea.Msg) tea.Cmd
	// View renders the page body in the size given by SetSize.
	View() string
	SetSize(width, height int)
	// Title is the breadcrumb shown in the header.
	Title() string
	// ShortHelp lists the keys that apply now, for the footer.
	ShortHelp() []key.Binding
	// FullHelp lists the page's keys in groups, for the help page.
	FullHelp() [][]key.Binding
	// Capturing reports whether printable keys go to a text field now
	// (so q and ? are typed, not acted on).
	Capturing() bool
}

// refresher is a page that reloads its data on each live refresh tick.
type refresher interface{ refresh() tea.Cmd }

// Model is the root tea.Model of the dashboard.
type Model struct {
	c      *common
	stack  []page
	status statusMsg
	quit   bool
}

var _ tea.Model = (*Model)(nil)

// New returns the dashboard for opts (see Options for defaults). The
// model is for one tea.Program; build one per session.
func New(opts Options) (*Model, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	return newModel(opts.withDefaults()), nil
}

func newModel(o Options) *Model {
	c := newCommon(o)
	m := &Model{c: c}
	m.stack = []page{newListPage(c)}
	m.resize()
	return m
}

// Init starts the live refresh and loads the list.
func (m *Model) Init() tea.Cmd {
	return tea.Batch(m.stack[0].Init(), m.tick())
}

func (m *Model) tick() tea.Cmd {
	if m.c.refresh < 0 {
		return nil
	}
	return tea.Tick(m.c.refresh, func(time.Time) tea.Msg { return tickMsg{} })
}

func (m *Model) top() page { return m.stack[len(m.stack)-1] }

func (m *Model) resize() {
	w, h := m.c.width, m.c.height
	for _, p := range m.stack {
		p.SetSize(w, max(h-3, 1))
	}
}

// Update implements tea.Model.
func (m *Model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	cmd := m.update(msg)
	return m, tea.Batch(cmd, m.applyNav())
}

// applyNav opens and closes the pages queued by the last update.
func (m *Model) applyNav() tea.Cmd {
	var cmds []tea.Cmd
	for len(m.c.nav) > 0 {
		op := m.c.nav[0]
		m.c.nav = m.c.nav[1:]
		switch {
		case op.close != nil:
			for i := 1; i < len(m.stack); i++ { // the list (0) stays
				if m.stack[i] == op.close {
					m.stack = m.stack[:i]
					break
				}
			}
			continue
		case op.open == nil:
			if len(m.stack) > 1 {
				m.stack = m.stack[:len(m.stack)-1]
			}
			continue
		}
		p := op.open
		p.SetSize(m.c.width, max(m.c.height-3, 1))
		m.stack = append(m.stack, p)
		cmds = append(cmds, p.Init())
	}
	return tea.Batch(cmds...)
}

func (m *Model) update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.c.width, m.c.height = sizeOr80x24(msg.Width, msg.Height)
		m.resize()
		return nil
	case tea.KeyMsg:
		return m.key(msg)
	case tickMsg:
		cmds := []tea.Cmd{m.tick()}
		for _, p := range m.stack {
			if r, ok := p.(refresher); ok {
				cmds = append(cmds, r.refresh())
			}
		}
		return tea.Batch(cmds...)
	case statusMsg:
		m.status = msg
		return nil
	case vmsMsg:
		if msg.err != nil {
			m.status = statusMsg{text: "list: " + errorText(msg.err), err: true}
		}
	case opDoneMsg:
		m.status = opStatus(msg)
		cmds := []tea.Cmd{m.broadcast(msg)}
		if msg.open != "" && msg.err == nil {
			// Replace the create form by the new VM's page, synchronously
			// so that no other page is popped by mistake.
			if _, ok := m.top().(*createPage); ok {
				m.stack = m.stack[:len(m.stack)-1]
			}
			d := newDetailPage(m.c, msg.open)
			d.SetSize(m.c.width, max(m.c.height-3, 1))
			m.stack = append(m.stack, d)
			cmds = append(cmds, d.Init())
		}
		// Refresh at once rather than at the next tick.
		for _, p := range m.stack {
			if r, ok := p.(refresher); ok {
				cmds = append(cmds, r.refresh())
			}
		}
		return tea.Batch(cmds...)
	case createProgressMsg:
		m.status = statusMsg{text: msg.step + "…"}
		return tea.Batch(m.broadcast(msg), listen(msg.ch))
	case consoleReadyMsg:
		return m.c.execConsole(msg.name)
	case consoleDoneMsg:
		if msg.err != nil {
			m.status = statusMsg{text: "console " + msg.name + ": " + errorText(msg.err), err: true}
		} else {
			m.status = statusMsg{text: "detached from " + msg.name}
		}
		return tea.Batch(m.broadcast(msg), tea.ClearScreen)
	}
	return m.broadcast(msg)
}

func (m *Model) broadcast(msg tea.Msg) tea.Cmd {
	var cmds []tea.Cmd
	for _, p := range m.stack {
		cmds = append(cmds, p.Update(msg))
	}
	return tea.Batch(cmds...)
}

func opStatus(msg opDoneMsg) statusMsg {
	if msg.err != nil {
		return statusMsg{text: msg.verb + " " + msg.name + ": " + errorText(msg.err), err: true}
	}
	text := pastTense(msg.verb) + " " + msg.name
	if msg.to != "" {
		text += " to " + msg.to
	}
	if msg.note != "" {
		text += " (" + msg.note + ")"
	}
	return statusMsg{text: text}
}

func pastTense(verb string) string {
	switch verb {
	case "stop":
		return "stopped"
	case "copy":
		return "copied"
	case "snapshot":
		return "snapshot taken of"
	case "restore":
		return "restored"
	case "delete snapshot":
		return "deleted snapshot of"
	case "rename":
		return "renamed"
	}
	if strings.HasSuffix(verb, "e") {
		return verb + "d"
	}
	return verb + "ed"
}

func (m *Model) key(msg tea.KeyMsg) tea.Cmd {
	k := m.c.keys
	if key.Matches(msg, k.ForceQuit) {
		m.quit = true
		return tea.Quit
	}
	if m.tooSmall() {
		if key.Matches(msg, k.Quit) {
			m.quit = true
			return tea.Quit
		}
		return nil
	}
	top := m.top()
	if !top.Capturing() {
		switch {
		case key.Matches(msg, k.Quit):
			m.quit = true
			return tea.Quit
		case key.Matches(msg, k.Help):
			if _, ok := top.(*helpPage); ok {
				return m.c.back()
			}
			return m.c.open(newHelpPage(m.c, top))
		}
	}
	// Any key clears an old message.
	m.status = statusMsg{}
	return top.Update(msg)
}

// sizeOr80x24 is w x h, each dimension a client does not report (0: the
// SSH client of script, some CI runners, ssh -tt without a terminal) taken
// as DefaultWidth x DefaultHeight.
func sizeOr80x24(w, h int) (int, int) {
	if w <= 0 {
		w = DefaultWidth
	}
	if h <= 0 {
		h = DefaultHeight
	}
	return w, h
}

func (m *Model) tooSmall() bool { return m.c.width < MinWidth || m.c.height < MinHeight }

// View implements tea.Model.
func (m *Model) View() string {
	if m.quit {
		return ""
	}
	w, h := m.c.width, m.c.height
	if m.tooSmall() {
		return center(w, h, fmt.Sprintf("Terminal too small (%dx%d).\nNeed at least %dx%d.\nq to quit", w, h, MinWidth, MinHeight))
	}
	top := m.top()
	st := m.c.styles
	body := top.View()
	lines := strings.Split(body, "\n")
	bh := h - 3
	if len(lines) > bh {
		lines = lines[:bh]
	}
	for len(lines) < bh {
		lines = append(lines, "")
	}
	for i, l := range lines {
		lines[i] = ansi.Truncate(l, w, "…")
	}
	var b strings.Builder
	b.WriteString(m.header())
	b.WriteString("\n")
	b.WriteString(strings.Join(lines, "\n"))
	b.WriteString("\n")
	if m.status.text != "" {
		s := st.Info
		if m.status.err {
			s = st.Error
		}
		b.WriteString(s.Render(ansi.Truncate(m.status.text, w, "…")))
	}
	b.WriteString("\n")
	b.WriteString(m.footer(top))
	return b.String()
}

func (m *Model) header() string {
	st := m.c.styles
	crumbs := make([]string, 0, len(m.stack))
	for _, p := range m.stack {
		if t := p.Title(); t != "" {
			crumbs = append(crumbs, t)
		}
	}
	left := st.Header.Render("minions") + " " + st.HeaderDim.Render(strings.Join(crumbs, " › "))
	right := m.c.user
	if m.c.admin {
		right += " (admin)"
	}
	right = st.HeaderDim.Render(right)
	gap := m.c.width - ansi.StringWidth(left) - ansi.StringWidth(right)
	if gap < 1 {
		return ansi.Truncate(left, m.c.width, "…")
	}
	return left + strings.Repeat(" ", gap) + right
}

// footer lists the keys that apply now; "? help" and "q quit" stay visible
// at the end however narrow the terminal is.
func (m *Model) footer(top page) string {
	if top.Capturing() {
		return m.keyLine(top.ShortHelp(), m.c.width)
	}
	tail := m.keyLine([]key.Binding{m.c.keys.Help, m.c.keys.Quit}, m.c.width)
	sep := m.c.styles.Help.ShortSeparator.Render(" • ")
	head := m.keyLine(top.ShortHelp(), m.c.width-ansi.StringWidth(tail)-ansi.StringWidth(sep))
	if head == "" {
		return tail
	}
	return head + sep + tail
}

// keyLine renders "k desc • k desc" within width cells, ending with "…"
// when some keys do not fit.
func (m *Model) keyLine(keys []key.Binding, width int) string {
	st := m.c.styles.Help
	sep := st.ShortSeparator.Render(" • ")
	var b strings.Builder
	used := 0
	for i, k := range keys {
		if !k.Enabled() {
			continue
		}
		item := st.ShortKey.Render(k.Help().Key) + " " + st.ShortDesc.Render(k.Help().Desc)
		if used > 0 {
			item = sep + item
		}
		w := ansi.StringWidth(item)
		rest := 0
		if i < len(keys)-1 {
			rest = 2 // room for " …"
		}
		if used+w+rest > width {
			if used+2 <= width && used > 0 {
				b.WriteString(st.Ellipsis.Render(" …"))
			}
			break
		}
		b.WriteString(item)
		used += w
	}
	return b.String()
}
