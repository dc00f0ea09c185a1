#!/usr/bin/env bash
# go test with its usual output, then the list of skipped tests and the
# packages' ok/FAIL lines again at the end. Arguments go to go test. The
# verbose output of every test goes to bin/test-<TESTLOG>.log.
set -uo pipefail
cd "$(dirname "$0")/.."
go=${GO:-go}
mkdir -p bin
$go build -o bin/testsummary ./scripts/testsummary || exit 1
$go test -json "$@" | bin/testsummary -log "bin/test-${TESTLOG:-go}.log"
