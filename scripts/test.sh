#!/usr/bin/env bash
# Every test, as CI runs it (.ci/run): installs what the tests need, then
# vet, unit tests (among them the release tarball installed into a
# temporary prefix, ./scripts), and the end-to-end tests with real QEMU VMs
# (as root, each in a network namespace it creates). Runs as root; re-runs
# itself with sudo when started by another user on a machine that has sudo.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/.."
export PATH="$PATH:/usr/local/go/bin"
case "${1:-}" in
  -h | --help)
    echo "usage: scripts/test.sh [--dry-run]   (as root: vet, unit, end-to-end tests and fuzzing)"
    exit 0 ;;
esac
. scripts/root.sh
need_root "$self" "$@"
if [ "${1:-}" = --dry-run ]; then
  printf '+ %s\n' "bash scripts/deps.sh --test" "make build" "go vet ./..." "go test -count=1 -timeout 35m -p 2 ./..." "go test -fuzz ... (brief fuzzing)"
  exit 0
fi
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
bash scripts/deps.sh --test
start=$(date +%s)
export MINIONS_TEST_KERNEL_DIR="${MINIONS_TEST_KERNEL_DIR:-$HOME/.cache/minions-test/kernels}" # vsockcli TestQEMUAgent
make build
go vet ./...
# Unit, integration and end-to-end tests. -p 2: at most two packages (and so
# at most two booting VMs) at a time on 2 cores; each package boots one VM
# at a time.
set +e
go test -count=1 -timeout 35m -p 2 ./... 2>&1 | tee /tmp/minions-test.log
status=${PIPESTATUS[0]}
# Brief fuzzing of the decoders and parsers (a few thousand inputs each; a
# count, not a duration, so a loaded machine does not turn it into a flake).
for target in "FuzzParseLine ./guestagent/link" "FuzzAccept ./guestagent/link" \
              "FuzzDecode ./api" "FuzzValidName ./api" "FuzzParseInterspersed ./cli"; do
  set -- $target
  go test -run '^$' -fuzz "^$1\$" -fuzztime 3000x "$2" || status=1
done
echo "tests took $(( $(date +%s) - start ))s"
exit "$status"
