package hostcmd

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/minionsdev/minions/daemon/local"
	"github.com/minionsdev/minions/vm/hypervisor/qemu"
)

// ramChecks are doctor's lines about the RAM files on the tmpfs: this
// installation's memory dir mem (its VMs' RAM files, and any that none of
// its VMs or saved states names) and the other installations' beside it.
// A memory dir whose installation's state dir is gone (its record says
// so) is garbage that a daemon's start removes once nothing uses it; one
// without a record cannot be told from a live installation's, so it is
// only reported. Nothing is changed.
func ramChecks(mem string, paths local.Paths) []check {
	var out []check
	add := func(what string, ok bool, format string, args ...any) {
		out = append(out, check{What: what, OK: ok, Detail: fmt.Sprintf(format, args...)})
	}
	var own *qemu.MemoryDirInfo
	var gone, unrecorded []qemu.MemoryDirInfo
	others, empty := 0, 0
	for _, info := range qemu.MemoryDirs(filepath.Dir(mem)) {
		switch {
		case info.Path == mem:
			own = &info
		case info.Files == 0:
			others++
			empty++
		case info.Gone:
			others++
			gone = append(gone, info)
		case info.State == "" && info.InUse < info.Files:
			others++
			unrecorded = append(unrecorded, info)
		default:
			others++
		}
	}
	if own == nil {
		add("ram files", true, "none (%s does not exist)", mem)
	} else if left, err := qemu.UnownedRAMFiles(mem, paths.State, paths.Run); err != nil {
		add("ram files", false, "%s: %v", mem, err)
	} else if len(left) > 0 {
		var size int64
		var names []string
		for _, p := range left {
			if st, err := os.Stat(p); err == nil {
				size += st.Size()
				names = append(names, filepath.Base(p))
			}
		}
		add("ram files", false, "%d in %s (%d MiB on the tmpfs); %d of them (%d MiB) named by no vm or saved state of this installation: %s (the daemon's start removes those no process uses)",
			own.Files, mem, own.Bytes>>20, len(left), size>>20, strings.Join(names, ", "))
	} else {
		add("ram files", true, "%d in %s (%d MiB on the tmpfs), each a vm's or a saved state's", own.Files, mem, own.Bytes>>20)
	}
	sum := func(infos []qemu.MemoryDirInfo) (n int, b int64) {
		for _, i := range infos {
			n += i.Files
			b += i.Bytes
		}
		return
	}
	gn, gb := sum(gone)
	un, ub := sum(unrecorded)
	detail := fmt.Sprintf("%d other installations' memory dirs in %s (%d empty)", others, filepath.Dir(mem), empty)
	if len(gone) > 0 {
		detail += fmt.Sprintf("; %d of installations that are gone: %d files, %d MiB (a daemon's start removes them once no process uses them)", len(gone), gn, gb>>20)
	}
	if len(unrecorded) > 0 {
		detail += fmt.Sprintf("; %d without a record of their installation holding files no process uses: %d files, %d MiB (they cannot be told from a live installation's suspended vms: remove them by hand once their installations are gone)", len(unrecorded), un, ub>>20)
	}
	add("other ram files", len(gone) == 0 && len(unrecorded) == 0, "%s", detail)
	return out
}
