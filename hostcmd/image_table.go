package hostcmd

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/minionsdev/minions/internal/units"
)

// imageRow is one line of `image list`.
type imageRow struct {
	Ref       string
	SizeBytes int64
	Created   time.Time
	Default   bool
}

// printImageTable prints `image list` as a table, or empty when there are
// no images.
func printImageTable(w io.Writer, rows []imageRow, empty string) {
	if len(rows) == 0 {
		fmt.Fprintln(w, empty)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "IMAGE\tSIZE\tCREATED\tDEFAULT")
	for _, r := range rows {
		mark := ""
		if r.Default {
			mark = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Ref, units.Bytes(r.SizeBytes), r.Created.Format(time.RFC3339), mark)
	}
	tw.Flush()
}
