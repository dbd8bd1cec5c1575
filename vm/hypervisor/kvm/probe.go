package kvm

import (
	"fmt"
	"strings"
	"time"
)

// DefaultDevice is the KVM device node.
const DefaultDevice = "/dev/kvm"

// DefaultMaxPrivilegedTime is how long the privileged stage may take before
// the host is judged too slow to boot a kernel. On working hardware
// virtualisation the stage takes well under a millisecond; under
// software-assisted schemes that emulate every privileged instruction it takes
// hundreds of milliseconds or fails outright.
const DefaultMaxPrivilegedTime = 100 * time.Millisecond

// Options tunes Probe. The zero value means the defaults.
type Options struct {
	// Device is the KVM device node (default DefaultDevice).
	Device string
	// MaxPrivilegedTime bounds the "kernel" stage (default
	// DefaultMaxPrivilegedTime); slower counts as not usable.
	MaxPrivilegedTime time.Duration
}

func (o Options) withDefaults() Options {
	if o.Device == "" {
		o.Device = DefaultDevice
	}
	if o.MaxPrivilegedTime <= 0 {
		o.MaxPrivilegedTime = DefaultMaxPrivilegedTime
	}
	return o
}

// Stage names, in the order Probe runs them.
const (
	StageOpen   = "open"   // open the device, check the API version, create a VM
	StageReal   = "real"   // 16-bit real-mode arithmetic, port write, hlt
	StageLong   = "long"   // 64-bit long mode with 4-level paging
	StageKernel = "kernel" // GDT/IDT loads, far return, CPUID, MSRs, CR3 switches, CMPXCHG16B on a page table, a guest-handled page fault
)

// StageResult is the outcome of one probe stage.
type StageResult struct {
	Name     string        `json:"name"`
	OK       bool          `json:"ok"`
	Detail   string        `json:"detail,omitempty"` // what was observed, or what went wrong
	Duration time.Duration `json:"duration_ns"`
}

// Result is what Probe found.
type Result struct {
	// Usable is true only when every stage ran and produced the expected
	// exits and values in reasonable time.
	Usable bool `json:"usable"`
	// Reason is one human-readable sentence: why KVM is or is not usable.
	Reason string `json:"reason"`
	// DevicePresent reports whether the device node exists at all.
	DevicePresent bool `json:"device_present"`
	// APIVersion is KVM_GET_API_VERSION (12 on every supported kernel), 0
	// when the device could not be opened.
	APIVersion int           `json:"api_version,omitempty"`
	Stages     []StageResult `json:"stages,omitempty"`
	Duration   time.Duration `json:"duration_ns"`
}

// String renders the result as a few lines for `minions doctor`.
func (r Result) String() string {
	var b strings.Builder
	verdict := "not usable"
	if r.Usable {
		verdict = "usable"
	}
	fmt.Fprintf(&b, "kvm: %s: %s (%s)\n", verdict, r.Reason, r.Duration.Round(time.Microsecond))
	for _, s := range r.Stages {
		mark := "ok  "
		if !s.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(&b, "  %s %-6s %10s  %s\n", mark, s.Name, s.Duration.Round(time.Microsecond), s.Detail)
	}
	return b.String()
}

// finish fills Usable and Reason from the stages.
func (r *Result) finish(start time.Time) {
	r.Duration = time.Since(start)
	for _, s := range r.Stages {
		if !s.OK {
			r.Usable = false
			r.Reason = fmt.Sprintf("stage %q failed: %s", s.Name, s.Detail)
			if strings.Contains(s.Detail, "emulation failure") {
				r.Reason += "; stock guest kernels die the same way where the host shadows guest page tables (Debian's cloud kernel: lock cmpxchg16b in SLUB, emulation failure)"
			}
			return
		}
	}
	if len(r.Stages) == 0 {
		r.Usable = false
		if r.Reason == "" {
			r.Reason = "no probe stage ran"
		}
		return
	}
	r.Usable = true
	r.Reason = "a test VM ran real-mode, long-mode and kernel-style privileged code with the expected results"
}
