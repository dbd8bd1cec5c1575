// Package cloudhypervisor is the hypervisor.Driver for Cloud Hypervisor.
//
// Start runs `cloud-hypervisor --api-socket <RunDir>/ch.sock` in its own
// session and drives it over the REST API on that socket: vmm.ping until the
// API answers, vm.create with a complete VmConfig (payload, cpus with room
// for hotplug, memory with a hotplug area, disks, a TAP-backed virtio-net,
// a vsock device, the serial console to a file, rng), then vm.boot. Every
// request body is a typed struct whose JSON is checked against Cloud
// Hypervisor's own OpenAPI document in the tests.
//
// The guest agent is reached over Cloud Hypervisor's hybrid vsock: the host
// connects to the vsock unix socket, writes "CONNECT <port>\n", reads
// "OK <n>\n", and the stream is then raw (DialAgent).
//
// Shutdown presses the virtual power button and waits, by polling /proc and
// vm.info (no fixed sleeps), for the process to exit; it then escalates to
// vm.shutdown + vmm.shutdown and finally SIGKILL. SaveState is vm.pause +
// vm.snapshot to a directory; Restore starts a new VMM, points the saved
// config at the new spec's sockets, disks and TAP, and does vm.restore +
// vm.resume. Resize is vm.resize (live vCPU and memory hotplug); ResizeDisk
// is vm.resize-disk.
//
// The driver keeps no state between calls: everything is in the Handle.
// Children it starts are reaped by a goroutine of the starting process; a
// VMM that outlives that process is reparented and reaped by init. Alive
// compares PID and start time, so a dead or reused PID is never reported
// running.
package cloudhypervisor
