// Package announce is how the daemon talks to its operator: the log
// format and logger of `serve` and `node` (text on a terminal, JSON
// otherwise), the banner printed once the listeners are up, and the DNS
// records a domain needs.
package announce
