"""The batch script's requeue: the node exclusion (and a new node count) must land on the requeued job
however long slurmctld keeps the old allocation COMPLETING, because the real slurmctld refuses
`scontrol update ExcNodeList=` until the job is PENDING again. A real Slurm makes that window a race (it
flaked on CI: the next attempt ran on the excluded node), so here a fake `scontrol` plays the job's states
deterministically: RUNNING -> (requeue) COMPLETING for a few polls -> PENDING BeginTime -> (release)
RUNNING, refusing job updates while COMPLETING just as slurmctld does. The real-Slurm run of the same
path is tests/integration/test_slurm_health.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from mltrain.launch.slurm import prepare_submission

ROOT = Path(__file__).resolve().parents[2]
RUN_YAML = ROOT / "tests" / "golden" / "sbatch" / "run.yaml"

FAKE_SCONTROL = r"""#!/bin/bash
# state file: "<JobState> <Reason> <polls left in COMPLETING>"; every call is logged
S="$FAKE_STATE"; read -r state reason left < "$S"
echo "scontrol $*" >> "$FAKE_LOG"
if [ "$1" = -o ] && [ "$3" = job ]; then
  if [ "$state" = COMPLETING ]; then
    left=$((left - 1)); [ "$left" -le 0 ] && { state=PENDING; reason=BeginTime; }
    echo "$state $reason $left" > "$S"
  fi
  echo "JobId=7 JobState=$state Reason=$reason Restarts=1"; exit 0
fi
run_one() {  # one scontrol command: requeue J | update jobid=J k=v...
  case $1 in
    requeue) echo "COMPLETING None $FAKE_COMPLETING_POLLS" > "$S"; return 0 ;;
    update)
      read -r state reason left < "$S"
      if [ "$state" != PENDING ]; then echo "scontrol_update_job error: Job is no longer pending execution" >&2; return 1; fi
      shift
      for kv in "$@"; do
        case $kv in
          StartTime=now) echo "RUNNING None 0" > "$S"; echo "released" >> "$FAKE_LOG" ;;
          jobid=*) ;;
          *) echo "applied $kv" >> "$FAKE_LOG" ;;
        esac
      done; return 0 ;;
  esac
}
if [ $# = 0 ]; then rc=0; while read -r l; do echo "stdin $l" >> "$FAKE_LOG"; run_one $l || rc=1; done; exit $rc; fi
run_one "$@"
"""


def _script_functions(script: str) -> str:
    """The rendered script's helpers up to and including requeue() (no top-level statements)."""
    start = script.index("job_field() {")
    end = script.index("\n}\n", script.index("requeue() {")) + 3
    return script[start:end]


@pytest.mark.parametrize("polls", [1, 8])
@pytest.mark.parametrize("nodes", ["", "1"])
def test_requeue_excludes_the_node_however_long_the_old_allocation_completes(
    tmp_path: Path, polls: int, nodes: str
) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(
        f"name: c\ninstance_type: p5.48xlarge\nnodes: 2\ngpus_per_node: 8\nrun_base_dir: {tmp_path}\n"
        "container: {image: /x.sqsh}\nslurm: {hyperpod: false}\n"
    )
    sub = prepare_submission(RUN_YAML, spec)
    fb = tmp_path / "fakebin"
    fb.mkdir()
    (fb / "scontrol").write_text(FAKE_SCONTROL)
    (fb / "scontrol").chmod(0o755)
    state, log = tmp_path / "state", tmp_path / "fake.log"
    state.write_text("RUNNING None 0\n")
    log.write_text("")
    run_dir = sub.run_dir
    (run_dir / "slurm").mkdir(parents=True, exist_ok=True)
    body = (
        _script_functions(sub.script).replace("sleep 60  # the requeue", "exit 99  # the requeue")
        + f'\nRUN_DIR={run_dir}; ALLOC_OPEN=0; log() {{ echo "[script] $*"; }}\nrequeue nodeB "{nodes}"\n'
    )
    env = {
        **os.environ,
        "PATH": f"{fb}:{os.environ['PATH']}",
        "FAKE_STATE": str(state),
        "FAKE_LOG": str(log),
        "FAKE_COMPLETING_POLLS": str(polls),
        "SLURM_JOB_ID": "7",
    }
    p = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 99, p.stderr  # requeued; a real Slurm would have ended the script here
    out = run_dir / "slurm" / "7.out"
    deadline = time.monotonic() + 20
    while "released" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    calls = log.read_text()
    assert "released" in calls, (calls, out.read_text() if out.exists() else "")
    # the exclusion (and node count) was applied while the job was PENDING, before the hold was released
    applied = re.findall(r"^applied (\S+)$", calls, re.M)
    want = ["ExcNodeList=nodeB"] + (["NumNodes=1-1", "NumTasks=1"] if nodes else [])
    assert applied == want, calls
    assert calls.index("applied ExcNodeList=nodeB") < calls.index("released")
    assert "requeue 7" in calls
