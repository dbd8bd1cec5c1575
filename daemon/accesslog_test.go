package daemon

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/minionsdev/minions/internal/announce"
)

// The access log is JSON lines tagged component=access in the JSON
// format, and slog's text lines in the text format.
func TestAccessLoggerFormats(t *testing.T) {
	var b bytes.Buffer
	accessLogger(&b, announce.LogJSON).Info("hello", "n", 1)
	var rec map[string]any
	if err := json.Unmarshal(b.Bytes(), &rec); err != nil || rec["component"] != "access" || rec["msg"] != "hello" || rec["n"] != 1.0 {
		t.Fatalf("JSON access log line %q: %v", b.String(), err)
	}
	b.Reset()
	accessLogger(&b, announce.LogText).Info("hello")
	if line := b.String(); !strings.Contains(line, "msg=hello") || !strings.Contains(line, "component=access") {
		t.Fatalf("text access log line %q", line)
	}
}
