package errs

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// diskFullTexts are what tools Minions shells out to (qemu-img, mkfs,
// cp, tar) and SQLite print when a filesystem is full or over quota.
var diskFullTexts = []string{
	"no space left on device",
	"disk quota exceeded",
	"database or disk is full",
	"could not allocate block", // mke2fs -d
}

// IsDiskFull reports whether err says a filesystem ran out of space or
// quota: ENOSPC or EDQUOT anywhere in its chain, or the text a child
// process or SQLite prints for them.
func IsDiskFull(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	msg := strings.ToLower(err.Error())
	for _, t := range diskFullTexts {
		if strings.Contains(msg, t) {
			return true
		}
	}
	return false
}

// DiskFull is the one place that turns "the disk is full" into a
// ResourceExhausted error (exit code 8) naming the filesystem that holds
// dir. Any other error, and nil, is returned unchanged; an error that is
// already ResourceExhausted is left as it is. The original error stays in
// the chain.
func DiskFull(err error, dir string) error {
	if !IsDiskFull(err) || errors.Is(err, ResourceExhausted) {
		return err
	}
	return &wrapped{classed: classed{class: ResourceExhausted,
		msg: fmt.Sprintf("no space left on the state filesystem (%s): free space and retry: %v", dir, err)}, inner: err}
}
