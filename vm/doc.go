// Package vm holds the VM domain rules that do no I/O: name validation,
// the lifecycle state machine (which operation is allowed in which state),
// identifiers and the guest kernel command line. The orchestration that uses
// them lives in service; drivers live in vm/hypervisor.
package vm
