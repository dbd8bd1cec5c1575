package widget

import (
	"strings"

	"github.com/charmbracelet/lipgloss"
	"github.com/charmbracelet/x/ansi"
)

// TableStyles style a Table.
type TableStyles struct {
	Header   lipgloss.Style
	Cell     lipgloss.Style
	Selected lipgloss.Style // the cursor row
	Cursor   lipgloss.Style // the "›" marker
	Empty    lipgloss.Style // the empty-table message
}

// Column describes one table column.
type Column struct {
	Title string
	// Width is the column's width in cells; the Flex column gets at least
	// this and all space left over.
	Width int
	// Flex marks the column that absorbs extra width (at most one).
	Flex bool
	// Priority decides which columns survive a narrow terminal: columns
	// are dropped from the highest Priority value down; 0 is never dropped.
	Priority int
	// Right aligns the column to the right.
	Right bool
}

// Table is a scrolling table with a cursor. The zero value is an empty
// table; set its size with SetSize.
type Table struct {
	Columns []Column
	Styles  TableStyles
	// EmptyText is shown when there are no rows.
	EmptyText string

	rows          [][]string
	cursor        int
	offset        int
	width, height int // height in rows, including the header line
}

// SetSize sets the table's size in cells (height includes the header).
func (t *Table) SetSize(width, height int) {
	t.width, t.height = width, height
	t.clamp()
}

// SetRows replaces the rows, keeping the cursor in range.
func (t *Table) SetRows(rows [][]string) {
	t.rows = rows
	t.clamp()
}

// Rows returns the rows.
func (t *Table) Rows() [][]string { return t.rows }

// Cursor returns the cursor row index, or -1 when the table is empty.
func (t *Table) Cursor() int {
	if len(t.rows) == 0 {
		return -1
	}
	return t.cursor
}

// SetCursor moves the cursor to row i (clamped).
func (t *Table) SetCursor(i int) {
	t.cursor = i
	t.clamp()
}

// Move moves the cursor by n rows (clamped).
func (t *Table) Move(n int) { t.SetCursor(t.cursor + n) }

// Top moves the cursor to the first row.
func (t *Table) Top() { t.SetCursor(0) }

// Bottom moves the cursor to the last row.
func (t *Table) Bottom() { t.SetCursor(len(t.rows) - 1) }

func (t *Table) visibleRows() int {
	n := t.height - 1
	if n < 1 {
		n = 1
	}
	return n
}

func (t *Table) clamp() {
	if t.cursor >= len(t.rows) {
		t.cursor = len(t.rows) - 1
	}
	if t.cursor < 0 {
		t.cursor = 0
	}
	vis := t.visibleRows()
	if t.cursor < t.offset {
		t.offset = t.cursor
	}
	if t.cursor >= t.offset+vis {
		t.offset = t.cursor - vis + 1
	}
	if max := len(t.rows) - vis; t.offset > max {
		t.offset = max
	}
	if t.offset < 0 {
		t.offset = 0
	}
}

// layout returns the indexes of the columns that fit and their widths.
func (t *Table) layout() ([]int, []int) {
	const gap, marker = 1, 2
	keep := make([]bool, len(t.Columns))
	for i := range keep {
		keep[i] = true
	}
	need := func() int {
		n := marker
		for i, c := range t.Columns {
			if keep[i] {
				n += c.Width + gap
			}
		}
		return n
	}
	for need() > t.width {
		drop, best := -1, 0
		for i, c := range t.Columns {
			if keep[i] && c.Priority > best {
				drop, best = i, c.Priority
			}
		}
		if drop < 0 {
			break
		}
		keep[drop] = false
	}
	var idx, widths []int
	spare := t.width - need()
	for i, c := range t.Columns {
		if !keep[i] {
			continue
		}
		w := c.Width
		if c.Flex && spare > 0 {
			w += spare
		}
		idx = append(idx, i)
		widths = append(widths, w)
	}
	return idx, widths
}

// View renders the table: a header line and up to height-1 rows.
func (t *Table) View() string {
	idx, widths := t.layout()
	var b strings.Builder
	line := func(cells []string, style lipgloss.Style, prefix string) {
		parts := make([]string, len(idx))
		for j, i := range idx {
			v := ""
			if i < len(cells) {
				v = cells[i]
			}
			parts[j] = fit(v, widths[j], t.Columns[i].Right)
		}
		b.WriteString(prefix)
		b.WriteString(style.Render(strings.Join(parts, " ")))
	}
	titles := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		titles[i] = c.Title
	}
	line(titles, t.Styles.Header, "  ")
	if len(t.rows) == 0 {
		b.WriteString("\n  " + t.Styles.Empty.Render(ansi.Truncate(t.EmptyText, max(t.width-2, 0), "…")))
		return b.String()
	}
	end := min(t.offset+t.visibleRows(), len(t.rows))
	for r := t.offset; r < end; r++ {
		b.WriteString("\n")
		if r == t.cursor {
			line(t.rows[r], t.Styles.Selected, t.Styles.Cursor.Render("›")+" ")
		} else {
			line(t.rows[r], t.Styles.Cell, "  ")
		}
	}
	return b.String()
}

// fit pads or truncates s to exactly w cells.
func fit(s string, w int, right bool) string {
	if w <= 0 {
		return ""
	}
	s = ansi.Truncate(s, w, "…")
	pad := w - ansi.StringWidth(s)
	if right {
		return strings.Repeat(" ", pad) + s
	}
	return s + strings.Repeat(" ", pad)
}
