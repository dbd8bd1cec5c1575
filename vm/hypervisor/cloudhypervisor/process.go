package cloudhypervisor

import (
	"bytes"
	"io"
	"os"
	"strings"
)

// logTail returns up to n trailing bytes of the file, on one line.
func logTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(-n, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	s := strings.TrimSpace(string(bytes.ToValidUTF8(b, nil)))
	if s == "" {
		return "(empty log)"
	}
	return strings.ReplaceAll(s, "\n", "; ")
}
