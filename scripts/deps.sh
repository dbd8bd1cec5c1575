#!/usr/bin/env bash
# Installs the Debian packages Minions needs (scripts/packages.txt; with
# --test also scripts/test-packages.txt) on a fresh Debian 12 machine.
# Idempotent; quiet when everything is present.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
lists=(scripts/packages.txt)
[ "${1:-}" = --test ] && lists+=(scripts/test-packages.txt)
mapfile -t pkgs < <(cat "${lists[@]}" | grep -v '^\s*#' | grep -v '^\s*$' | sort -u)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  . scripts/root.sh
  need_root "$self" "$@"
  echo "installing: ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="$PATH:/usr/local/go/bin"
fi
command -v go >/dev/null || { echo "Go is required (https://go.dev/dl); Debian 12's golang is too old" >&2; exit 1; }
