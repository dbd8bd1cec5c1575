package images

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
)

// agentSumFile, in the initramfs directory, keeps the SHA-256 of each
// agent binary by its identity, so that resolving an image (every create
// and boot) does not read and hash a binary of several MiB.
const agentSumFile = "agent-sha256.json"

// agentSumEntry is a kept sum: the binary's identity when it was hashed.
type agentSumEntry struct {
	Ident []int64 `json:"ident"` // device, inode, size, mtime, ctime (ns)
	Sum   string  `json:"sha256"`
}

var (
	agentSumsMu sync.Mutex
	agentSums   = map[string]agentSumEntry{} // by path, this process
	agentHashes atomic.Int64                 // binaries hashed (tests)
)

// forgetAgentSums drops this process's kept sums (tests: a new process).
func forgetAgentSums() {
	agentSumsMu.Lock()
	defer agentSumsMu.Unlock()
	agentSums = map[string]agentSumEntry{}
}

// agentSum returns the SHA-256 (hex) of the file at path, kept in memory
// and in dir/agentSumFile by the file's device, inode, size, mtime and
// ctime: any write to the binary or its replacement changes them (ctime
// cannot be set back), so a kept sum is used only for the same bytes.
// A missing file is an fs.ErrNotExist error.
func agentSum(dir, path string) (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "", &os.PathError{Op: "stat", Path: path, Err: err}
	}
	ident := []int64{int64(st.Dev), int64(st.Ino), st.Size, st.Mtim.Nano(), st.Ctim.Nano()}
	same := func(e agentSumEntry) bool {
		if len(e.Ident) != len(ident) || len(e.Sum) != 2*sha256.Size {
			return false
		}
		for i := range ident {
			if e.Ident[i] != ident[i] {
				return false
			}
		}
		return true
	}
	agentSumsMu.Lock()
	defer agentSumsMu.Unlock()
	if e, ok := agentSums[path]; ok && same(e) {
		return e.Sum, nil
	}
	file := filepath.Join(dir, agentSumFile)
	kept := map[string]agentSumEntry{}
	if b, err := os.ReadFile(file); err == nil {
		if json.Unmarshal(b, &kept) != nil {
			kept = map[string]agentSumEntry{}
		}
	}
	if e, ok := kept[path]; ok && same(e) {
		agentSums[path] = e
		return e.Sum, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	agentHashes.Add(1)
	e := agentSumEntry{Ident: ident, Sum: hex.EncodeToString(h.Sum(nil))}
	agentSums[path] = e
	kept[path] = e
	if b, err := json.Marshal(kept); err == nil && os.MkdirAll(dir, DirMode) == nil {
		if tmp, err := os.CreateTemp(dir, ".tmp-agentsum-"); err == nil {
			_, werr := tmp.Write(b)
			if cerr := tmp.Close(); werr == nil && cerr == nil {
				os.Rename(tmp.Name(), file)
			}
			os.Remove(tmp.Name())
		}
	}
	return e.Sum, nil
}
