// Package service is the façade every frontend calls (CLI, HTTP API, SSH
// gateway, dashboard, proxy): it checks who is asking, validates input, runs
// state changes in SQLite transactions and orchestrates long operations
// (create, start, stop, snapshot...) as durable, resumable steps with undo.
//
// Concurrency: a Service is safe for concurrent use, also across processes
// sharing one state directory. Operations on one VM are serialised by a
// per-VM file lock; address allocation is serialised by SQLite's write lock.
package service
