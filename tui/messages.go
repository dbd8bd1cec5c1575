package tui

import (
	tea "github.com/charmbracelet/bubbletea"

	"github.com/minionsdev/minions/service"
)

// Messages. Every backend call returns one of these from a tea.Cmd.
type (
	// tickMsg drives the live refresh.
	tickMsg struct{}
	// vmsMsg carries the result of Backend.List.
	vmsMsg struct {
		vms []service.VM
		err error
	}
	// detailMsg carries the result of loadDetail.
	detailMsg struct {
		name   string
		detail Detail
		err    error
	}
	// imagesMsg carries the result of Backend.ListImages.
	imagesMsg struct {
		images []ImageChoice
		err    error
	}
	// snapshotsMsg carries the result of Backend.ListSnapshots.
	snapshotsMsg struct {
		name  string
		snaps []service.Snapshot
		err   error
	}
	// opDoneMsg reports a finished action ("stop", "web", err).
	opDoneMsg struct {
		verb, name string
		// to is the new name after rename or copy.
		to  string
		err error
		// note is added to the status line on success ("disk+memory").
		note string
		// open, when set, opens this VM's detail page afterwards.
		open string
	}
	// createProgressMsg is one step reported by Backend.Create.
	createProgressMsg struct {
		step string
		ch   <-chan tea.Msg
	}
	// consoleDoneMsg reports the end of a console session.
	consoleDoneMsg struct {
		name string
		err  error
	}
	// statusMsg sets the status line.
	statusMsg struct {
		text string
		err  bool
	}
)

func status(text string) tea.Cmd {
	return func() tea.Msg { return statusMsg{text: text} }
}
