#!/usr/bin/env bash
# `make test`: the whole suite in three streams at once, so it fits 2 cores in under 20 minutes.
#   1. the real-Slurm tests, one at a time (they share one local cluster and mostly wait on it);
#   2. the Spark tests, one at a time (one local Spark session and one standalone cluster for all of them,
#      not a JVM per xdist worker); they use the CPU the Slurm stream leaves while it waits;
#   3. everything else, on two pytest-xdist workers.
# Stream 3 runs at a lower CPU priority (nice 5): the Slurm stream is the long pole and its tests have clocks
# in them (time limits, deadlines a minute away), so it gets the CPU first; stream 3 takes the rest, and
# the CPU the Slurm stream leaves while it waits.
# Streams 1 and 2 keep their output in files, printed after stream 3's. Any stream failing, or running no
# test at all (pytest's exit 5), fails the run. The last line sums them: "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-.venv/bin/python}
slurm_log=$(mktemp -t mltrain-slurm-tests.XXXXXX)
spark_log=$(mktemp -t mltrain-spark-tests.XXXXXX)
rest_log=$(mktemp -t mltrain-tests.XXXXXX)
trap 'rm -f "$slurm_log" "$spark_log" "$rest_log"' EXIT

"$PY" -m pytest -q -m "slurm and not spark" --durations=15 "$@" >"$slurm_log" 2>&1 &
slurm_pid=$!
"$PY" -m pytest -q -m "spark and not slurm" --durations=10 "$@" >"$spark_log" 2>&1 &
spark_pid=$!
# --maxschedchunk 1: each worker takes the next test when it is free (slow ones are collected first, see
# tests/conftest.py), so the two workers end together instead of one running a chunk of slow tests alone
nice -n 5 "$PY" -m pytest -q -m "not slurm and not spark" -n 2 --maxschedchunk 1 --durations=15 "$@" 2>&1 | tee "$rest_log"
rest_rc=${PIPESTATUS[0]}
wait "$slurm_pid"
slurm_rc=$?
wait "$spark_pid"
spark_rc=$?

echo
echo "================ real-Slurm tests (ran alongside) ================"
cat "$slurm_log"
echo
echo "================ Spark tests (ran alongside) ================"
cat "$spark_log"
count() {  # count WORD in pytest's closing line of FILE
  grep -E '(passed|failed|error)' "$2" | tail -1 | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' || echo 0
}
passed=0
failed=0
for f in "$slurm_log" "$spark_log" "$rest_log"; do
  passed=$(( passed + $(count passed "$f") ))
  failed=$(( failed + $(count failed "$f") + $(count error "$f") ))
done
echo
echo "slurm stream exit $slurm_rc, spark stream exit $spark_rc, other stream exit $rest_rc"
echo "tests: $passed passed, $failed failed"
[ "$slurm_rc" = 0 ] && [ "$spark_rc" = 0 ] && [ "$rest_rc" = 0 ]
