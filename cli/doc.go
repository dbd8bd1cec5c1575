// Package cli is Minions' one command grammar. The same command tree serves
// the host CLI (main), `ssh host <command>` (gateway) and, through the HTTP
// API client, a remote daemon. Every command renders a table or plain text,
// or JSON with --json, and maps errors to exit codes in one place
// (internal/errs).
package cli
