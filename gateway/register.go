package gateway

import (
	"errors"
	"fmt"
	"strings"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/minionsdev/minions/internal/errs"
)

// registerModel is the sign-up screen an unknown key sees on an interactive
// session. It asks for a user name (and the invite code under the invite
// policy) and calls register; under the closed policy it only explains.
type registerModel struct {
	policy      string
	fingerprint string
	register    func(name, invite string) (User, error)

	step   registerStep
	name   field
	invite field
	err    string
	user   *User // set once registered
	width  int

	title, dim, errStyle, ok lipgloss.Style
}

type registerStep int

const (
	stepName registerStep = iota
	stepInvite
	stepBusy
	stepClosed
	stepDone
)

// registeredMsg is the result of a register call.
type registeredMsg struct {
	user User
	err  error
}

func newRegisterModel(r *lipgloss.Renderer, policy, fingerprint string, register func(name, invite string) (User, error)) registerModel {
	name := field{prompt: "name:   ", limit: 32}
	invite := field{prompt: "invite: ", limit: 128, secret: true}
	m := registerModel{
		policy:      policy,
		fingerprint: fingerprint,
		register:    register,
		name:        name,
		invite:      invite,
		title:       r.NewStyle().Bold(true).Foreground(lipgloss.Color("212")),
		dim:         r.NewStyle().Foreground(lipgloss.Color("245")),
		errStyle:    r.NewStyle().Foreground(lipgloss.Color("203")),
		ok:          r.NewStyle().Foreground(lipgloss.Color("78")),
	}
	if policy == PolicyClosed {
		m.step = stepClosed
	}
	return m
}

func (m registerModel) Init() tea.Cmd { return nil }

func (m registerModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.width = msg.Width
		return m, nil
	case registeredMsg:
		if msg.err != nil {
			m.err = userMessage(msg.err)
			if errors.Is(msg.err, errs.ResourceExhausted) {
				m.step = stepDone
				return m, tea.Quit
			}
			m.step = stepName
			if errors.Is(msg.err, errs.PermissionDenied) && m.policy == PolicyInvite {
				m.step = stepInvite
				m.invite.value = ""
			}
			return m, nil
		}
		u := msg.user
		m.user = &u
		m.step = stepDone
		return m, tea.Quit
	case tea.KeyMsg:
		switch msg.Type {
		case tea.KeyCtrlC, tea.KeyEsc:
			return m, tea.Quit
		}
		switch m.step {
		case stepClosed, stepDone:
			if msg.String() == "q" || msg.Type == tea.KeyEnter {
				return m, tea.Quit
			}
			return m, nil
		case stepBusy:
			return m, nil
		case stepName:
			if msg.Type == tea.KeyEnter {
				if strings.TrimSpace(m.name.value) == "" {
					m.err = "pick a name"
					return m, nil
				}
				m.err = ""
				if m.policy == PolicyInvite {
					m.step = stepInvite
					return m, nil
				}
				return m.submit()
			}
		case stepInvite:
			if msg.Type == tea.KeyEnter {
				return m.submit()
			}
		}
		switch m.step {
		case stepName:
			m.name = m.name.update(msg)
		case stepInvite:
			m.invite = m.invite.update(msg)
		}
	}
	return m, nil
}

func (m registerModel) submit() (tea.Model, tea.Cmd) {
	m.step = stepBusy
	m.err = ""
	name, invite, register := strings.TrimSpace(m.name.value), m.invite.value, m.register
	return m, func() tea.Msg {
		u, err := register(name, invite)
		return registeredMsg{user: u, err: err}
	}
}

// userMessage is the text of err without the class noise.
func userMessage(err error) string {
	return strings.TrimPrefix(err.Error(), "minions: ")
}

func (m registerModel) View() string {
	var b strings.Builder
	b.WriteString(m.title.Render("Welcome to Minions") + "\n\n")
	fmt.Fprintf(&b, "%s\n\n", m.dim.Render("Your key "+m.fingerprint+" is not registered yet."))
	switch m.step {
	case stepClosed:
		b.WriteString("Sign-up is closed on this host. Ask an admin for an account and an\n")
		b.WriteString("API token, then register this key with the minions CLI (it signs a\n")
		b.WriteString("challenge with the key, proving that you hold it):\n\n")
		b.WriteString("  minions ssh-key add ~/.ssh/id_ed25519.pub\n\n")
		b.WriteString(m.dim.Render("q quit") + "\n")
		return b.String()
	case stepDone:
		if m.user != nil {
			b.WriteString(m.ok.Render("Registered as "+m.user.Name) + "\n")
		} else if m.err != "" {
			b.WriteString(m.errStyle.Render(m.err) + "\n")
		}
		return b.String()
	}
	b.WriteString("Pick a user name to sign up.\n\n")
	b.WriteString(m.name.view(m.step == stepName) + "\n")
	if m.policy == PolicyInvite {
		b.WriteString(m.invite.view(m.step == stepInvite) + "\n")
	}
	b.WriteString("\n")
	if m.step == stepBusy {
		b.WriteString(m.dim.Render("registering…") + "\n")
	}
	if m.err != "" {
		b.WriteString(m.errStyle.Render(m.err) + "\n")
	}
	b.WriteString(m.dim.Render("enter continue • esc quit") + "\n")
	return b.String()
}

// field is a one-line text input: printable runes, backspace, ctrl+u.
type field struct {
	prompt string
	value  string
	limit  int
	secret bool
}

func (f field) update(k tea.KeyMsg) field {
	switch k.Type {
	case tea.KeyBackspace:
		if r := []rune(f.value); len(r) > 0 {
			f.value = string(r[:len(r)-1])
		}
	case tea.KeyCtrlU:
		f.value = ""
	case tea.KeyRunes, tea.KeySpace:
		for _, r := range k.Runes {
			if len([]rune(f.value)) < f.limit && r >= ' ' && r != 0x7f {
				f.value += string(r)
			}
		}
	}
	return f
}

func (f field) view(focused bool) string {
	v := f.value
	if f.secret {
		v = strings.Repeat("•", len([]rune(v)))
	}
	if focused {
		v += "█"
	}
	return f.prompt + v
}
