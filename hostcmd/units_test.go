package hostcmd

import (
	"strings"
	"testing"

	"github.com/minionsdev/minions/daemon/local"
)

// `systemctl stop minions` must stop only the daemon: VMs outlive it. On
// cgroup v1 systemd still tracks the QEMUs through its own name=systemd
// hierarchy (they were forked from the service), so only KillMode=process
// keeps it from signalling them on stop or restart.
func TestUnitLeavesVMsRunningOnStop(t *testing.T) {
	for _, state := range []string{local.DefaultStateDir, "/srv/minions"} {
		u := Units("/usr/local/bin/minions", local.Paths{State: state, Run: "/run/m"})["minions.service"]
		if strings.Count(u, "KillMode=") != 1 || !strings.Contains(u, "\nKillMode=process\n") {
			t.Errorf("minions.service for %s must have exactly KillMode=process:\n%s", state, u)
		}
		for _, bad := range []string{"ExecStop=", "SendSIGKILL=yes", "KillMode=control-group", "KillMode=mixed"} {
			if strings.Contains(u, bad) {
				t.Errorf("minions.service has %s: stopping the daemon would stop VMs", bad)
			}
		}
		if !strings.Contains(u, "ExecStart=/usr/local/bin/minions") || !strings.HasSuffix(strings.Split(strings.Split(u, "ExecStart=")[1], "\n")[0], " serve") {
			t.Errorf("ExecStart:\n%s", u)
		}
	}
}
