#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine, as root: install what Minions
# needs, build and install it, set up the host (bridge, nftables, guest
# kernel, the minimal image) and run `minions serve`.
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
exec minions serve "$@"
