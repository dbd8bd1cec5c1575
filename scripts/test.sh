#!/usr/bin/env bash
# Every test, as CI runs it (.ci/run): installs what the tests need, then
# vet, unit tests, and the end-to-end tests with real QEMU VMs (as root,
# each in a network namespace it creates).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
bash scripts/deps.sh
start=$(date +%s)
make build
go vet ./...
# Unit and integration tests. Packages that boot VMs serialize on a lock
# file, so at most one VM boots per package at a time on 2 cores.
go test -count=1 -timeout 30m -p 2 ./... 2>&1 | tee /tmp/minions-test.log
status=${PIPESTATUS[0]}
echo "tests took $(( $(date +%s) - start ))s"
exit "$status"
