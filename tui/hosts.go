package tui

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/charmbracelet/bubbles/key"
	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/minionsdev/minions/internal/textsafe"
	"github.com/minionsdev/minions/service"
	"github.com/minionsdev/minions/tui/widget"
)

// The hosts view (issue 14): admins open it from the VM list with h. It
// shows every host of the cluster with its state, address, subnet, what
// its VMs use against its capacity, its VM count, the age of its last
// heartbeat and its version; c and u cordon and uncordon the selected
// host after a confirmation. Non-admins get a message and no data: the
// list page never opens the view for them, and the service refuses
// HostList to them anyway.

// hostsMsg carries the result of Backend.HostList.
type hostsMsg struct {
	hosts []service.Host
	err   error
}

// Host states as service.Host.State reports them.
const (
	hostReady       = "ready"
	hostCordoned    = "cordoned"
	hostJoining     = "joining"
	hostUnreachable = service.HostUnreachable
)

// notAdminHosts is the status line a non-admin gets for h.
const notAdminHosts = "hosts: only admins see the cluster's hosts"

// hostsPage is the table of the cluster's hosts.
type hostsPage struct {
	c      *common
	table  widget.Table
	hosts  []service.Host
	err    error
	loaded bool
	width  int
	height int
}

func newHostsPage(c *common) *hostsPage {
	p := &hostsPage{c: c}
	p.table.Styles = c.styles.Table
	p.table.EmptyText = "Loading…"
	p.table.Columns = []widget.Column{
		{Title: "NAME", Width: 10, Flex: true},
		{Title: "STATE", Width: 11},
		{Title: "ADDRESS", Width: 15, Priority: 5},
		{Title: "SUBNET", Width: 14, Priority: 6},
		{Title: "VMS", Width: 3, Right: true, Priority: 1},
		{Title: "CPUS", Width: 5, Right: true, Priority: 2},
		{Title: "MEMORY", Width: 9, Right: true, Priority: 3},
		{Title: "DISK", Width: 9, Right: true, Priority: 4},
		{Title: "HEARTBEAT", Width: 9, Right: true},
		{Title: "VERSION", Width: 8, Priority: 7},
	}
	return p
}

func (p *hostsPage) Init() tea.Cmd { return p.refresh() }

func (p *hostsPage) refresh() tea.Cmd {
	c := p.c
	return func() tea.Msg {
		hs, err := c.backend.HostList(c.ctx)
		return hostsMsg{hosts: hs, err: err}
	}
}

func (p *hostsPage) Title() string   { return "hosts" }
func (p *hostsPage) Capturing() bool { return false }

// SetSize leaves room for the title, a blank line and the selected host's
// summary (two lines under the table).
func (p *hostsPage) SetSize(w, h int) {
	p.width, p.height = w, h
	p.table.SetSize(w, max(h-5, 2))
}

func (p *hostsPage) selected() *service.Host {
	i := p.table.Cursor()
	if i < 0 || i >= len(p.hosts) {
		return nil
	}
	h := p.hosts[i]
	return &h
}

func (p *hostsPage) Update(msg tea.Msg) tea.Cmd {
	switch msg := msg.(type) {
	case hostsMsg:
		p.err = msg.err
		if msg.err == nil {
			p.loaded = true
			p.set(msg.hosts)
		}
	case tea.KeyMsg:
		return p.key(msg)
	}
	return nil
}

// set replaces the hosts, keeping the cursor on the same host.
func (p *hostsPage) set(hs []service.Host) {
	var keep string
	if h := p.selected(); h != nil {
		keep = h.ID
	}
	p.hosts = hs
	rows := make([][]string, len(hs))
	cur := -1
	for i, h := range hs {
		rows[i] = []string{
			textsafe.Clean(h.Name),
			p.stateStyle(h).Render(hostStateText(h)),
			orDash(textsafe.Clean(h.Address)),
			orDash(textsafe.Clean(hostSubnet(h))),
			strconv.Itoa(h.VMs),
			fmtCPUs(h.UsedCPUs, h.CPUs),
			fmtUse(h.UsedMemoryMiB, h.MemoryMiB),
			fmtUse(h.UsedDiskGiB*1024, h.DiskMiB),
			p.heartbeat(h),
			orDash(textsafe.Clean(h.Version)),
		}
		if h.ID == keep {
			cur = i
		}
	}
	p.table.SetRows(rows)
	if cur >= 0 {
		p.table.SetCursor(cur)
	}
	p.table.EmptyText = "No hosts yet. Add one with: minions host add NAME"
}

func (p *hostsPage) key(msg tea.KeyMsg) tea.Cmd {
	k, c := p.c.keys, p.c
	if k.navigate(msg, &p.table) {
		return nil
	}
	h := p.selected()
	switch {
	case key.Matches(msg, k.Back):
		return c.back()
	case key.Matches(msg, k.HostCordon) && h != nil && !h.Cordoned:
		name, vms := h.Name, h.VMs
		return c.open(newConfirmPage(c, "Cordon host "+textsafe.Clean(name)+"?",
			fmt.Sprintf("No new VMs will be placed on it. Its %d VM(s) keep running.", vms),
			tea.Sequence(status("cordoning host "+textsafe.Clean(name)+"…"), c.op("cordon", "host "+textsafe.Clean(name), func(ctx context.Context) error {
				_, err := c.backend.HostCordon(ctx, name)
				return err
			}))))
	case key.Matches(msg, k.HostUncordon) && h != nil && h.Cordoned:
		name := h.Name
		return c.open(newConfirmPage(c, "Uncordon host "+textsafe.Clean(name)+"?",
			"New VMs may be placed on it again.",
			tea.Sequence(status("uncordoning host "+textsafe.Clean(name)+"…"), c.op("uncordon", "host "+textsafe.Clean(name), func(ctx context.Context) error {
				_, err := c.backend.HostUncordon(ctx, name)
				return err
			}))))
	}
	return nil
}

func (p *hostsPage) View() string {
	st := p.c.styles
	head := st.Title.Render("Hosts")
	if p.loaded {
		head += st.Dim.Render(fmt.Sprintf("  (%d)", len(p.hosts)))
	}
	if p.err != nil {
		head += "  " + st.Error.Render(errorText(p.err))
	}
	var b strings.Builder
	b.WriteString(head + "\n\n" + p.table.View())
	if h := p.selected(); h != nil {
		b.WriteString("\n\n" + p.summary(*h))
	}
	return b.String()
}

// summary is everything about the selected host on one line, so that a
// narrow terminal (which drops columns) still shows it all.
func (p *hostsPage) summary(h service.Host) string {
	st := p.c.styles
	parts := []string{
		st.Title.Render(textsafe.Clean(h.Name)),
		p.stateStyle(h).Render(hostStateText(h)),
		orDash(textsafe.Clean(h.Address)),
	}
	if s := hostSubnet(h); s != "" {
		parts = append(parts, "subnet "+textsafe.Clean(s))
	}
	parts = append(parts,
		fmt.Sprintf("%d vm(s)", h.VMs),
		"cpu "+fmtCPUs(h.UsedCPUs, h.CPUs),
		"memory "+fmtUse(h.UsedMemoryMiB, h.MemoryMiB)+fmtFree(h.MemoryFreeMiB, h.MemoryMiB),
		"disk "+fmtUse(h.UsedDiskGiB*1024, h.DiskMiB)+fmtFree(h.DiskFreeMiB, h.DiskMiB),
		"heartbeat "+p.heartbeat(h),
		"version "+orDash(textsafe.Clean(h.Version)),
	)
	sep := st.Dim.Render(" · ")
	return st.Value.Width(max(p.width, 1)).Render(strings.Join(parts, sep))
}

// heartbeat is the age of h's last heartbeat ("4s ago", "never").
func (p *hostsPage) heartbeat(h service.Host) string {
	if h.LastHeartbeat.IsZero() {
		return "never"
	}
	return fmtDuration(p.c.now().Sub(h.LastHeartbeat)) + " ago"
}

func (p *hostsPage) stateStyle(h service.Host) lipgloss.Style {
	st := p.c.styles
	switch h.State {
	case hostReady:
		return st.statusStyle(StatusRunning)
	case hostCordoned, hostJoining:
		return st.statusStyle(StatusStarting)
	case hostUnreachable:
		return st.statusStyle(StatusError)
	}
	return st.Value
}

// hostStateText is h's state, noting a cordon that an unreachable state
// hides.
func hostStateText(h service.Host) string {
	if h.Cordoned && h.State != hostCordoned {
		return h.State + ",cordoned"
	}
	return h.State
}

// fmtCPUs is "used/total" vCPUs; "-" before the host has reported any.
func fmtCPUs(used, total int) string {
	if used == 0 && total == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", used, total)
}

// fmtUse is "used/total" in the units of fmtMemory (MiB in, "2G/16G");
// "-" before the host has reported its capacity.
func fmtUse(usedMiB, totalMiB int64) string {
	if usedMiB == 0 && totalMiB == 0 {
		return "-"
	}
	used := "0"
	if usedMiB > 0 {
		used = fmtMemory(int(usedMiB))
	}
	return used + "/" + fmtMemory(int(totalMiB))
}

// fmtFree is " (N free)" once the host has reported its capacity.
func fmtFree(freeMiB, totalMiB int64) string {
	switch {
	case totalMiB <= 0:
		return ""
	case freeMiB <= 0:
		return " (0 free)"
	}
	return " (" + fmtMemory(int(freeMiB)) + " free)"
}

// hostSubnet is h's bridge subnet when the service reports one. Per-host
// subnets are being added to service.Host as a Subnet field in parallel;
// until then this reads it by name and returns "" without it. Once the
// field exists, replace the body by `return h.Subnet`.
func hostSubnet(h service.Host) string {
	return h.Subnet
}

func (p *hostsPage) ShortHelp() []key.Binding {
	k := p.c.keys
	out := []key.Binding{k.Back}
	if h := p.selected(); h != nil {
		if h.Cordoned {
			out = append(out, k.HostUncordon)
		} else {
			out = append(out, k.HostCordon)
		}
	}
	return out
}

func (p *hostsPage) FullHelp() [][]key.Binding {
	k := p.c.keys
	return [][]key.Binding{k.help(k.Back), {k.HostCordon, k.HostUncordon}, {k.Help, k.Quit}}
}

// openHosts opens the hosts view for an admin; anyone else gets a message
// and no call is made.
func (c *common) openHosts() tea.Cmd {
	if !c.admin {
		return func() tea.Msg { return statusMsg{text: notAdminHosts, err: true} }
	}
	return c.open(newHostsPage(c))
}
