// Package consolelog keeps a VM's serial console log under a size cap and
// reads it back without loading it whole.
//
// The log is two files: the current one (path) and the previous one
// (path + ".1"), each at most half the cap. A Writer appends to the current
// file and, when the next write would take it past half the cap, renames it
// to path.1 (replacing the older one) and starts a new file: the newest
// output is always kept, the oldest is dropped, and the two files together
// never exceed the cap.
//
// Run is the body of the per-VM console logger process: the hypervisor
// writes the console into a FIFO and Run copies it into a Writer until the
// hypervisor closes its end. Tail, Copy and Follower read the files back:
// only the bytes asked for, and following survives rotation.
package consolelog
