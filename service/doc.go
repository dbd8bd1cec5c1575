// Package service is the façade every frontend calls (CLI, HTTP API, SSH
// gateway, dashboard, proxy). It is policy: it checks who is asking,
// validates input, applies quotas and the host's memory overcommit (as the
// engine's admission hook), keeps users, tokens, web settings, domains,
// restart policies and the event log, and runs its own state changes in
// SQLite transactions. The VMs themselves (boot, stop, snapshot, copy,
// resize, reconcile, durable operations with undo, per-VM locks) are the
// business of an engine.Engine: the local one of this host, or another
// host's over the wire.
//
// Concurrency: a Service is safe for concurrent use, also across processes
// sharing one state directory. Operations on one VM are serialised by the
// engine's per-VM lock, which the service also takes around its own
// changes to a VM's record when the engine is local.
package service
