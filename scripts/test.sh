#!/usr/bin/env bash
# Every test, as CI runs it (.ci/run): installs what the tests need, then
# vet, unit tests, and the end-to-end tests with real QEMU VMs (as root,
# each in a network namespace it creates).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
bash scripts/deps.sh --test
start=$(date +%s)
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
