// Package fake is an in-memory hypervisor.Driver for fast unit tests of the
// engine: VMs are map entries, state transitions follow the Driver contract,
// and any operation can be made to fail on demand (Fail), a running VM can
// be made to die (Crash), and every call is recorded (Calls).
//
// The only host resources it touches are a unix socket per VM in
// Spec.RunDir (so leak checks have something real to find) and the state
// file SaveState writes, and, when Config.Helpers asks for them, real
// helper processes (sleep) whose death Repair mends, as the QEMU driver
// mends its agent relay's. It passes the conformance suite.
package fake
