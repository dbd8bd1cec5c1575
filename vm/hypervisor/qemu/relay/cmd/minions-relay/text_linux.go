package main

import (
	"bufio"
	"bytes"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// dropText unmaps the resident pages of this executable's read-only
// mappings (code, read-only data) with MADV_DONTNEED, so that they come
// back only as they are used again. The Go runtime reads its whole
// function table at start and a relay's rare paths (start, a CONNECT)
// touch code an idle relay never runs again; without this each relay
// kept about 3 MiB of the binary resident, a third of a VM's PSS with
// three VMs on the host. The pages stay in the page cache (shared, clean):
// nothing is lost, a later access faults them back in. Writable mappings
// (data, heap) are never touched. It returns the bytes advised.
func dropText() int {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0
	}
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0
	}
	total := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// start-end perms offset dev inode path
		f := bytes.Fields(sc.Bytes())
		if len(f) < 6 || string(f[5]) != exe || len(f[1]) != 4 || f[1][1] != '-' || f[1][3] != 'p' {
			continue
		}
		lo, hi, ok := bytes.Cut(f[0], []byte("-"))
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(string(lo), 16, 64)
		end, err2 := strconv.ParseUint(string(hi), 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(start), uintptr(end-start), unix.MADV_DONTNEED); e == 0 {
			total += int(end - start)
		}
	}
	return total
}
