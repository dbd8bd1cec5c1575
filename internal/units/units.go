// Package units formats quantities for people, the same way in every
// frontend (CLI tables, the TUI, command output over SSH).
package units

import "fmt"

// Bytes formats a size in bytes with binary prefixes and one decimal, no
// space, so it fits narrow columns: "512B", "1.5KiB", "12.0MiB", "3.2GiB".
// A negative size (unknown) is "-".
func Bytes[T ~int | ~int64 | ~uint64](n T) string {
	if n < 0 {
		return "-"
	}
	b := uint64(n)
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := uint64(unit), 0
	for m := b / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
