package announce

import (
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/minionsdev/minions/internal/errs"
	"golang.org/x/term"
)

// Log formats of `serve` (--log-format, config log_format).
const (
	LogAuto = "auto" // text on a terminal, JSON otherwise
	LogText = "text" // slog's key=value lines with a short local time
	LogJSON = "json" // one JSON object per line
)

// Format resolves format for the writer w: auto (or "") is text when w
// is a terminal and JSON otherwise. Errors: errs.InvalidArgument for an
// unknown format.
func Format(format string, w io.Writer) (string, error) {
	switch format {
	case LogText, LogJSON:
		return format, nil
	case "", LogAuto:
		if isTerminal(w) {
			return LogText, nil
		}
		return LogJSON, nil
	}
	return "", errs.New(errs.InvalidArgument, "log format %q: want auto, text or json", format)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// NewLogger returns the daemon's logger writing to w in a resolved format
// (LogText or LogJSON).
func NewLogger(w io.Writer, format string) *slog.Logger {
	if format == LogText {
		return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{ReplaceAttr: shortTime}))
	}
	return slog.New(slog.NewJSONHandler(w, nil))
}

// shortTime prints the time of top-level records as a local clock time, for
// people reading a terminal.
func shortTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey && a.Value.Kind() == slog.KindTime {
		return slog.String(slog.TimeKey, a.Value.Time().Local().Format(time.TimeOnly+".000"))
	}
	return a
}
