// Package conformance is the test suite every hypervisor.Driver passes:
// start, info, alive, pause, resume, shutdown and kill (with their
// idempotency), a failed start that leaves nothing behind, reloading a
// Handle from JSON, and save/restore where the driver supports it.
//
// A driver's own tests call Run with a Fixture that can produce bootable
// specs. Subtests run one after another (never more than one VM at a time)
// and always with timeouts.
package conformance
