package engine

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// MemTotal reads the host's physical memory in bytes from /proc/meminfo.
func MemTotal() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err == nil && kb > 0 {
					return kb << 10, nil
				}
			}
			return 0, fmt.Errorf("/proc/meminfo: bad MemTotal line %q", sc.Text())
		}
	}
	return 0, fmt.Errorf("/proc/meminfo: no MemTotal")
}
