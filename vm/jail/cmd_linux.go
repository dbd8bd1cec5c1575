package jail

import (
	"encoding/json"
	"os/exec"
	"syscall"

	"github.com/minionsdev/minions/internal/errs"
)

// Cmd returns the launcher command for p: Config.Command with the JSON
// plan appended, started in a new mount namespace. The caller sets its
// streams, ExtraFiles and session, and starts it as root.
func (c Config) Cmd(p Plan) (*exec.Cmd, error) {
	c = c.WithDefaults()
	if len(c.Command) == 0 {
		return nil, errs.New(errs.InvalidArgument, "jail: no launcher command configured")
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	argv := append(append([]string(nil), c.Command...), string(b))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = p.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	return cmd, nil
}
