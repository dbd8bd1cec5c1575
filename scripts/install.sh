#!/usr/bin/env bash
# Installs a Minions release (`make release` builds the tarball this script
# ships in): the minions, minions-daemon, minions-agent and minions-relay binaries into PREFIX, the
# systemd units, and then runs `minions init` (directories, keys, bridge,
# nftables). Idempotent: running it again upgrades in place.
set -euo pipefail
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
usage() {
  cat <<'USAGE'
usage: install.sh [--prefix DIR] [--systemd-dir DIR] [--no-init]

  --prefix DIR       install DIR/bin/minions, DIR/lib/minions/minions-daemon,
                     DIR/lib/minions/minions-agent and DIR/lib/minions/minions-relay
                     (default /usr/local)
  --systemd-dir DIR  install the systemd units there (default /etc/systemd/system
                     when the prefix is /, /usr or /usr/local; otherwise none)
  --no-init          do not run `minions init` afterwards
MINIONS_STATE_DIR and MINIONS_RUN_DIR choose where `minions init` puts its state.
USAGE
}
prefix=/usr/local
systemd_dir=
init=1
while (($#)); do
  case "$1" in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --systemd-dir) systemd_dir=${2:?--systemd-dir needs a directory}; shift 2 ;;
    --systemd-dir=*) systemd_dir=${1#*=}; shift ;;
    --no-init) init=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
mkdir -p "$prefix" 2>/dev/null || true
prefix=$(cd "$prefix" 2>/dev/null && pwd) || { echo "install.sh: cannot create prefix $prefix" >&2; exit 1; }
if [ -z "$systemd_dir" ]; then
  case "$prefix" in / | /usr | /usr/local) systemd_dir=/etc/systemd/system ;; esac
fi
if [ "$(id -u)" != 0 ] && { ((init)) || [ -n "$systemd_dir" ]; }; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo --preserve-env=MINIONS_STATE_DIR,MINIONS_RUN_DIR bash "$here/install.sh" \
      --prefix "$prefix" ${systemd_dir:+--systemd-dir "$systemd_dir"} $( ((init)) || echo --no-init)
  fi
  echo "install.sh: needs root (for \`minions init\` and the systemd units), and sudo is not installed: run it as root" >&2
  exit 1
fi
bin=${prefix%/}/bin
lib=${prefix%/}/lib/minions
install -D -m 0755 "$here/minions" "$bin/minions"
install -D -m 0755 "$here/minions-agent" "$lib/minions-agent"
install -D -m 0755 "$here/minions-relay" "$lib/minions-relay"
install -D -m 0755 "$here/minions-daemon" "$lib/minions-daemon"
echo "installed $bin/minions, $lib/minions-daemon, $lib/minions-agent and $lib/minions-relay"
if [ -n "$systemd_dir" ]; then
  mkdir -p "$systemd_dir"
  for unit in "$here"/systemd/*.service; do
    sed "s|@PREFIX@|${prefix%/}|g" "$unit" >"$systemd_dir/$(basename "$unit")"
    chmod 0644 "$systemd_dir/$(basename "$unit")"
    echo "installed $systemd_dir/$(basename "$unit")"
  done
  if [ -d /run/systemd/system ] && [ "$systemd_dir" = /etc/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable minions-init.service minions.service
  fi
fi
if ((init)); then
  "$bin/minions" init
fi
echo
echo "Next steps:"
echo "  1. the host packages Minions uses (QEMU, nftables, ...): \`$bin/minions doctor\` lists what is missing"
echo "  2. a guest kernel and the first image: $bin/minions image build --os minimal"
if [ -n "$systemd_dir" ]; then
  echo "  3. start the daemon: systemctl start minions   (or: $bin/minions serve)"
else
  echo "  3. start the daemon: $bin/minions serve"
fi
