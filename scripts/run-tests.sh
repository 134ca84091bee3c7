#!/usr/bin/env bash
# `make test`: the whole suite in two streams at once, so it fits 2 cores in well under 20 minutes.
#   1. the real-Slurm tests, one at a time (they share one local cluster and mostly wait on it), and the Spark
#      tests (one local Spark session and one standalone cluster for all of them, not one per xdist worker);
#   2. everything else, on two pytest-xdist workers.
# Stream 1's output is kept in a file and printed after stream 2's. Either stream failing, or running no
# test at all (pytest's exit 5), fails the run. The last line sums both: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
log=$(mktemp -t mltrain-slurm-tests.XXXXXX)
trap 'rm -f "$log"' EXIT

"$PY" -m pytest -q -m "slurm or spark" --durations=15 "$@" >"$log" 2>&1 &
slurm_pid=$!
# --maxschedchunk 1: each worker takes the next test when it is free (slow ones are collected first, see
# tests/conftest.py), so the two workers end together instead of one running a chunk of slow tests alone
"$PY" -m pytest -q -m "not slurm and not spark" -n 2 --maxschedchunk 1 --durations=15 "$@" 2>&1 | tee "$log.rest"
rest_rc=${PIPESTATUS[0]}
wait "$slurm_pid"
slurm_rc=$?

echo
echo "================ real-Slurm and Spark tests (ran alongside) ================"
cat "$log"
count() {  # count WORD in pytest's closing line of FILE
  grep -E '(passed|failed|error)' "$2" | tail -1 | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' || echo 0
}
passed=$(( $(count passed "$log") + $(count passed "$log.rest") ))
failed=$(( $(count failed "$log") + $(count failed "$log.rest") + $(count error "$log") + $(count error "$log.rest") ))
rm -f "$log.rest"
echo
echo "slurm stream exit $slurm_rc, other stream exit $rest_rc"
echo "tests: $passed passed, $failed failed"
[ "$slurm_rc" = 0 ] && [ "$rest_rc" = 0 ]
