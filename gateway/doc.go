// Package gateway is Minions' SSH front door: one wish (charmbracelet/ssh)
// server that authenticates users by public key and routes every channel of
// a connection to one of three places:
//
//   - a VM relay, when the SSH user name names a VM the caller may reach
//     (`ssh web@host`, `ssh web@host cmd`, sftp/scp, `-L` forwards). Session
//     channels are relayed almost 1:1 to a "session" channel on the guest
//     agent's SSH connection (pty-req, env, window-change, shell, exec,
//     subsystem, signal in one direction; data both ways; exit-status and
//     exit-signal back after the output); direct-tcpip channels are opened
//     on the agent, which dials inside the guest. `ssh -R` (tcpip-forward)
//     makes the agent listen inside the guest and `ssh -A`
//     (auth-agent-req@openssh.com) gives the session an SSH_AUTH_SOCK in
//     the guest; the channels the agent opens back are routed to the
//     connection that asked (forward.go). Neither is offered to a
//     connection that does not name a VM the caller may reach.
//   - the dashboard, for an interactive session (PTY, no command) that does
//     not name a VM (`ssh host`).
//   - the command grammar, for `ssh host <command>` (the CLI's command tree,
//     passed in as Commands); with no PTY and no command it prints help.
//
// # Authentication
//
// Public keys only. A registered key is its user. An unknown key is still
// let in (after proving possession of the private key) so that an
// interactive session can show the registration screen governed by
// Config.Policy; a non-interactive session of an unknown key gets one line
// of instructions and exit status ExitUnregistered. The identity is carried
// in the permissions that golang.org/x/crypto/ssh returns for the key that
// actually authenticated, never in state left by the last callback (the
// CVE-2024-45337 pattern). Because the first key a client offers decides its
// identity, users with several keys should register all of them or pass
// `-i key -o IdentitiesOnly=yes`.
//
// Failed authentication (an unregistered key used where it cannot sign up,
// a wrong invite code, a refused registration, password or
// keyboard-interactive attempts) is counted per client IP; beyond
// Config.AuthRate failures in a minute, unknown keys from that IP get a
// "too many failed authentication attempts ... try again in Ns" message and
// exit status 8 (errs.ResourceExhausted) instead of a silent drop.
//
// # Exit statuses of the front door
//
//	0..8   whatever Commands.Run returns (errs.ExitCode classes)
//	5      the VM is stopped (errs.FailedPrecondition), with how to start it
//	7      the VM's agent is unreachable (errs.Unavailable)
//	8      rate limited (errs.ResourceExhausted)
//	10     ExitUnregistered: the key is not registered
//
// The Server is safe for concurrent use; New binds the listener, Run serves
// until its context ends and then shuts down gracefully.
package gateway
