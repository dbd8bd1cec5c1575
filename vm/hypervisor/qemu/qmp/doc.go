// Package qmp is a small client for the QEMU Machine Protocol over a unix
// socket: it reads the greeting, negotiates capabilities, executes commands
// with request ids and delivers asynchronous events.
//
// A Client is safe for concurrent use: several goroutines may Execute at
// once; replies are matched to requests by id. QEMU serves one QMP client per
// monitor socket at a time, so callers keep connections short (dial, execute,
// close) or serialise on one VM.
package qmp
