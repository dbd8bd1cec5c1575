package network

import (
	"fmt"
	"strings"
)

// PersistUnit returns a systemd oneshot unit that runs `<exe> init` at boot,
// so the bridge and nftables tables (which do not survive a reboot) are
// back before anything needs them. The CLI writes it for
// `minions init --persist` (as /etc/systemd/system/minions-network.service).
// exe should be an absolute path.
func PersistUnit(exe string) string {
	return fmt.Sprintf(`[Unit]
Description=Minions host network (bridge, nftables)
Documentation=https://github.com/minionsdev/minions
DefaultDependencies=no
After=local-fs.target systemd-sysctl.service nftables.service
Before=network-pre.target
Wants=network-pre.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%s init

[Install]
WantedBy=multi-user.target
`, systemdQuote(exe))
}

// systemdQuote quotes a path for an Exec= line when it needs it.
func systemdQuote(s string) string {
	if !strings.ContainsAny(s, " \t\"'\\%$") {
		return s
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, `%`, `%%`, `$`, `$$`)
	return `"` + r.Replace(s) + `"`
}
