// Package procfs identifies host processes by PID and start time and
// signals them without the risk of hitting a reused PID.
//
// A PID alone does not name a process for long: once it exits, the kernel
// may hand the number to another process. Drivers therefore persist the PID
// together with the start time (/proc/PID/stat field 22, clock ticks since
// boot) and compare both before trusting or signalling a process. Signals
// go through a pidfd opened before the start time is checked, so the check
// and the kill cannot be split by a PID reuse.
//
// Everything here reads /proc or issues pidfd system calls only; Alive
// keeps a pidfd open for each process it found alive (close-on-exec),
// until a check finds that process gone or nobody asked about it for a
// minute. All functions are safe for concurrent use. Linux only.
package procfs
