#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: install what Minions
# needs, build and install it, set up the host (bridge, nftables, guest
# kernel, the minimal and Debian images) and run `minions serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
[ "$(id -u)" = 0 ] || { echo "run as root (sudo $0)" >&2; exit 1; }
bash scripts/deps.sh
make build
make install
minions init --persist
if ! minions image list --json | grep -q '"os": "minimal"'; then
  minions image build --os minimal
fi
# The default image is Debian 12 with systemd, sshd and dev tools (minutes
# the first time: debootstrap). MINIONS_SETUP_IMAGES=minimal skips it; a
# failed build leaves the minimal image as the default.
if [ "${MINIONS_SETUP_IMAGES:-debian}" != minimal ]; then
  if minions image list --json | grep -q '"os": "debian"' || minions image build --os debian; then
    if minions image default --json | grep -q '"source": "built-in"'; then
      minions image default debian
    fi
  else
    echo "setup: the Debian image did not build; VMs default to the minimal image" >&2
  fi
fi
exec minions serve "$@"
