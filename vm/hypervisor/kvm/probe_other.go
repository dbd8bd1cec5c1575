//go:build !linux

package kvm

import (
	"context"
	"runtime"
)

// Probe reports KVM as not usable: it exists only on Linux.
func Probe(ctx context.Context, opts Options) Result {
	return Result{Reason: "KVM exists only on Linux, not " + runtime.GOOS}
}
