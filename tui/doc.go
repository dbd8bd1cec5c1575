// Package tui is the Minions dashboard: a Bubble Tea program that lists the
// caller's VMs and offers every action on them (create, start, stop,
// restart, resize, snapshots, rename, copy, destroy and a console shell).
//
// The same program serves `ssh host` (through the gateway, one program per
// SSH session) and `minions tui` on the host. It talks to Minions only
// through a service.Backend (in-process or over HTTP, the same interface
// every frontend takes), which the caller binds to one user; the package does no
// authorisation of its own.
//
// Layout, as in charmbracelet/soft-serve: a shared *common value (size,
// styles built from the session's own *lipgloss.Renderer, key map, backend,
// context), one page interface, pages (list, detail, forms, snapshots,
// confirm, help) apart from the generic widgets in tui/widget, and all I/O in
// tea.Cmds that return typed messages. No global lipgloss styles are used, so
// concurrent sessions with different colour profiles do not interfere.
//
// Entry points: [New] builds the root tea.Model; [Run] runs it on any
// terminal (an SSH session: input and output need not be files); [RunLocal]
// runs it on the process's own terminal. A caller that runs the tea.Program
// itself on an input that is not a terminal file (the gateway) calls
// [Model.Attach] first, so that a console gets every keystroke.
//
// Admins open the cluster's hosts (key h on the list): state, address,
// subnet, use against capacity, VMs, heartbeat age and version; c and u
// cordon and uncordon the selected host after a confirmation.
//
// The console (key t) runs a shell in the VM inside the same terminal via
// tea.Exec; ctrl+] detaches back to the dashboard.
package tui
