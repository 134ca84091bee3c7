"""The batch script's pre-training block: `launch.health_check` and the Prometheus file_sd targets.

Rendering (off = byte-identical goldens, tested in test_slurm_render.py; on = the lines below), and the
health decisions run against fake Slurm binaries (no slurmctld in unit tests; the fake srun runs the real
`mltrain health` once per fake node). The real thing on a local Slurm: tests/integration/test_slurm_health.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from tests.unit import test_slurm_render as base

from mltrain.launch.slurm import prepare_submission

RUN_YAML = base.RUN_YAML
ROOT = base.ROOT

# srun: the health step runs the real `mltrain health` as each fake node; other steps behave as in base.FAKE_BIN
FAKE_SRUN = """#!/bin/bash
echo "srun $*" >> "$FAKE_LOG"
if [[ " $* " == *" -m mltrain health "* ]]; then
  rc=0
  for n in nodeA nodeB; do SLURMD_NODENAME=$n python3 -m mltrain health --slurm-prolog --burn-in-s 0 --record "${@: -1}" || rc=1; done
  exit $rc
fi
[ "${@: -1}" = true ] && exit 0
[ -n "${FAKE_TARGETS:-}" ] && cat "$FAKE_TARGETS" >> "$FAKE_LOG"  # what Prometheus would read while training
[ -n "$FAKE_REASON" ] && echo "$FAKE_REASON" > "$RUN_DIR_FOR_FAKE/control/exit_reason"
exit "${FAKE_RC:-0}"
"""
FAKE_SINFO = """#!/bin/bash
printf "${FAKE_SINFO:-nodeA idle\\nnodeB idle\\nnodeC idle\\n}"
"""


def _local_spec(tmp_path: Path, extra: str = "") -> Path:
    spec = tmp_path / "c.yaml"
    spec.write_text(
        f"name: c\ninstance_type: local\nnodes: 2\ngpus_per_node: 0\nrun_base_dir: {tmp_path}\n"
        f"slurm: {{partition: local, hyperpod: false}}\n{extra}"
    )
    return spec


def _block(script: str) -> str:
    start = script.index("# ---------------------------------------------------------------- before training")
    return script[start : script.index("RUN_NO=0")]


def test_health_check_renders_the_srun_the_reader_and_the_decision(tmp_path: Path) -> None:
    sub = prepare_submission(
        RUN_YAML, _local_spec(tmp_path), overrides=["launch.health_check=true", "launch.health_burn_in_s=2.5"]
    )
    block = _block(sub.script)
    assert 'timeout 302 srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 \\\n' in block
    assert 'python3 -m mltrain health --slurm-prolog --burn-in-s 2.5 --record "$HEALTH_RECORD" &' in block
    assert '-m mltrain health --failed-hosts "$HEALTH_RECORD" --job "$SLURM_JOB_ID"' in block
    assert '--attempt "$ATTEMPT"' in block and "MLTRAIN_PY=(python3)" in block
    assert 'helper health-failed --nodes "$UNHEALTHY"' in block and "exclusion_plan" in block
    assert "file_sd" not in block and "--container-image" not in block
    subprocess.run(["bash", "-n"], input=sub.script, text=True, check=True)


def test_container_runs_health_and_file_sd_in_the_image(tmp_path: Path) -> None:
    spec = _local_spec(tmp_path, "container: {image: /x.sqsh, mounts: ['/fsx:/fsx'], workdir: /w}\n")
    sub = prepare_submission(
        RUN_YAML,
        spec,
        overrides=["launch.health_check=true", "log.prometheus.enabled=true", "log.prometheus.port=9555"],
    )
    block = _block(sub.script)
    flags = "--container-image=/x.sqsh --container-mounts=/fsx:/fsx --container-workdir=/w --no-container-mount-home"
    assert f"MLTRAIN_PY=(srun --nodes=1 --ntasks=1 {flags} python3)" in block
    assert "    --container-image=/x.sqsh \\\n    --container-mounts=/fsx:/fsx \\\n" in block  # the health srun
    assert '"${MLTRAIN_PY[@]}" -m mltrain.telemetry.file_sd "$RUN_DIR" golden 9555 \\' in block
    subprocess.run(["bash", "-n"], input=sub.script, text=True, check=True)


@pytest.mark.parametrize("port, shown", [(9410, True), (0, False)])
def test_file_sd_only_with_prometheus_on_a_fixed_port(tmp_path: Path, port: int, shown: bool) -> None:
    """Port 0 (any free port) is only known to the exporter, which registers itself."""
    sub = prepare_submission(
        RUN_YAML, _local_spec(tmp_path), overrides=["log.prometheus.enabled=true", f"log.prometheus.port={port}"]
    )
    assert ("-m mltrain.telemetry.file_sd" in sub.script) == shown
    assert "health --slurm-prolog" not in sub.script


def _fake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "FAKE_BIN", {**base.FAKE_BIN, "srun": FAKE_SRUN, "sinfo": FAKE_SINFO})


def _restarts(run: Path) -> list[dict]:
    p = run / "restarts.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def test_health_decisions_with_fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch)
    sets = ["launch.health_check=true", "launch.health_burn_in_s=0", "log.prometheus.enabled=true"]
    sub = prepare_submission(RUN_YAML, _local_spec(tmp_path), overrides=sets)
    run = sub.run_dir
    targets = tmp_path / "prometheus" / "targets" / "golden--job-7.json"

    # nodeB fails, nodeC is spare: requeue excluding nodeB, counted; no training step ran
    rc, log = base._run_fake(tmp_path, sub.script, run, 0, MLTRAIN_HEALTH_FAKE_FAIL_HOSTS="nodeB")
    (rec,) = _restarts(run)
    assert (rec["cause"], rec["node"], rec["action"], rec["counted"]) == ("health_check", "nodeB", "requeue", True)
    assert "scontrol requeue 7" in log
    assert "requeueing job 7, excluding nodeB\n" in (run / "slurm" / "7.out").read_text()
    assert "--rdzv-backend" not in log and not targets.exists()

    # attempt 1: nodeB's FAIL of attempt 0 is in the file, this attempt passes: trains; the targets file is
    # written for the allocation and removed when it ends
    rc, log = base._run_fake(tmp_path, sub.script, run, 1, FAKE_REASON="done", FAKE_TARGETS=str(targets))
    assert rc == 0 and "--rdzv-backend" in log and len(_restarts(run)) == 1
    assert '"targets": [\n      "nodeA:9410",\n      "nodeB:9410"\n    ]' in log
    assert '"slurm_job_id": "7"' in log and not targets.exists()

    # no spare node and no launch.min_nodes: give up with a record, no requeue
    (run / "restarts.jsonl").unlink()
    rc, log = base._run_fake(
        tmp_path,
        sub.script,
        run,
        0,
        MLTRAIN_HEALTH_FAKE_FAIL_HOSTS="nodeA,nodeB",
        FAKE_SINFO="nodeA idle\nnodeB idle\n",
    )
    (rec,) = _restarts(run)
    assert rc == 1 and (rec["cause"], rec["node"], rec["action"]) == ("health_check", "nodeA,nodeB", "give_up")
    assert "requeue 7" not in log

    # max_restarts used up: give up without asking for a plan
    sub1 = prepare_submission(RUN_YAML, _local_spec(tmp_path), overrides=[*sets, "launch.max_restarts=0"])
    (run / "restarts.jsonl").unlink()
    rc, log = base._run_fake(tmp_path, sub1.script, run, 0, MLTRAIN_HEALTH_FAKE_FAIL_HOSTS="nodeB")
    (rec,) = _restarts(run)
    assert rc == 1 and (rec["action"], rec["failures"]) == ("give_up", 1) and "requeue 7" not in log


def test_min_nodes_continues_on_fewer_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(monkeypatch)
    sets = ["launch.health_check=true", "launch.health_burn_in_s=0", "launch.min_nodes=1"]
    sub = prepare_submission(RUN_YAML, _local_spec(tmp_path), overrides=sets)
    rc, log = base._run_fake(
        tmp_path,
        sub.script,
        sub.run_dir,
        0,
        MLTRAIN_HEALTH_FAKE_FAIL_HOSTS="nodeB",
        FAKE_SINFO="nodeA idle\nnodeB idle\n",
    )
    (rec,) = _restarts(sub.run_dir)
    assert (rec["cause"], rec["node"], rec["action"]) == ("health_check", "nodeB", "requeue")
    assert "requeueing job 7, excluding nodeB, on 1 nodes" in (sub.run_dir / "slurm" / "7.out").read_text()
