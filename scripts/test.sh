#!/usr/bin/env bash
# The test suite as CI runs it (README's second command, .ci/run), in two parts:
#   1. everything but the Ray tests on one pytest-xdist worker per core (at most 4): the tests run
#      on one torch thread each, so on the 2-core machine two workers use both cores;
#   2. the Ray tests (marker `scale`, tests/scale) in one process afterwards: their background
#      Ray runs load both cores themselves and slow down several-fold beside other tests.
# Extra arguments go to both pytest calls (e.g. -x, --durations=20, a test path). A part that
# selects no test (pytest's exit status 5) counts as passed. `.venv/bin/python -m pytest` alone
# still runs the whole suite in one process.
set -uo pipefail
cd "$(dirname "$0")/.."
part() {
  .venv/bin/python -m pytest -q "$@"
  local rc=$?
  [[ $rc -eq 5 ]] && rc=0
  return $rc
}
part -n auto --maxprocesses=4 -m "not scale" "$@" || exit $?
part -m scale "$@"
