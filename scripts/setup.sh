#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install what Minions needs,
# build and install it, set up the host (bridge, nftables, guest kernel,
# the minimal and Debian images) and run `minions serve` with the
# arguments given. Runs as root; re-runs itself with sudo when started by
# another user on a machine that has sudo.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
export PATH="$PATH:/usr/local/go/bin"
usage() {
  cat <<'USAGE'
usage: scripts/setup.sh [--dry-run] [SERVE FLAGS...]

Installs packages (scripts/deps.sh), builds and installs minions, runs
`minions init --persist`, builds the minimal and Debian images and then
runs `minions serve SERVE FLAGS...` in the foreground, e.g.
  ./scripts/setup.sh --http-bind 127.0.0.1:8080
Run it as root (it re-runs itself with sudo when not root and sudo exists).
MINIONS_SETUP_IMAGES=minimal skips the Debian image.
--dry-run prints the steps instead of running them.
USAGE
}
dry=0
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  --dry-run) dry=1; shift ;;
esac
. scripts/root.sh
if ((dry)); then
  need_root "$self" --dry-run "$@"
else
  need_root "$self" "$@"
fi
serve="minions serve$(printf ' %q' "$@")"
if ((dry)); then
  printf '+ %s\n' "bash scripts/deps.sh" "make install" "minions init --persist" \
    "minions image build --os minimal    # unless built"
  [ "${MINIONS_SETUP_IMAGES:-debian}" = minimal ] ||
    printf '+ %s\n' "minions image build --os debian     # unless built; then the default image"
  printf '+ %s\n' "$serve"
  exit 0
fi
bash scripts/deps.sh
make install # builds first
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
