# Sourced by the scripts that need root (setup.sh, test.sh, install.sh).
#
# need_root SCRIPT ARGS...: returns when running as root; otherwise runs
# SCRIPT again through sudo when sudo is installed, and otherwise stops
# with a message saying what to do. A fresh Debian machine often has no
# sudo and a root login, so the README's commands never start with sudo.
need_root() {
  [ "$(id -u)" = 0 ] && return 0
  local script=$1
  shift
  if command -v sudo >/dev/null 2>&1; then
    echo "$(basename "$script"): not root, running it again with sudo" >&2
    exec sudo --preserve-env=MINIONS_SETUP_IMAGES,MINIONS_STATE_DIR,MINIONS_RUN_DIR,GOFLAGS,CI \
      bash "$script" "$@"
  fi
  echo "$(basename "$script"): needs root, and sudo is not installed: run it as root (e.g. after \`su -\`)" >&2
  exit 1
}
