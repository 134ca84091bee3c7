"""The sbatch script mltrain renders: golden files per shipped cluster spec, the EFA/NCCL env, and
the recovery logic of the batch script run against fake Slurm commands (no Slurm needed here;
tests/integration/test_slurm.py runs the same scripts on a real Slurm).

Regenerate the golden files after an intended change:  UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_slurm_render.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mltrain.cluster.spec import load_cluster_spec
from mltrain.config import load_run_config
from mltrain.errors import ConfigError, LaunchError
from mltrain.launch import nccl_env
from mltrain.launch.slurm import install_batch_helper, prepare_submission, render_sbatch, submit_run

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "sbatch"
RUN_YAML = GOLDEN / "run.yaml"
SHIPPED = sorted(p for p in (ROOT / "configs" / "clusters").glob("*.yaml") if not p.stem.startswith("eks-"))  # k8s: EKS
SHIPPED_AWS = [p for p in SHIPPED if p.stem != "local"]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path} differs from the rendered script (UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("spec", SHIPPED_AWS, ids=lambda p: p.stem)
def test_golden_shipped_specs(spec: Path) -> None:
    sub = prepare_submission(RUN_YAML, spec, hyperpod=False)
    _golden(f"{spec.stem}.sbatch", sub.script)


def test_golden_hyperpod() -> None:
    sub = prepare_submission(RUN_YAML, ROOT / "configs/clusters/p5-16.yaml", hyperpod=True)
    assert "--auto-resume=1" in sub.script
    decision = sub.script.split("recovery decision (on the host")[1]
    assert "scontrol requeue" not in decision and 'requeue "' not in decision
    _golden("p5-16-hyperpod.sbatch", sub.script)


def test_golden_local_venv() -> None:
    """The local CPU spec: no GPUs flag, 1 process per node, the submitting python's venv (normalised)."""
    cfg = load_run_config(RUN_YAML)
    cluster = load_cluster_spec(ROOT / "configs/clusters/local.yaml")
    cluster = cluster.model_copy(update={"run_base_dir": "/shared/mltrain"})
    text = render_sbatch(cfg, cluster, Path("/shared/mltrain/runs/golden"))
    text = text.replace(str(Path(sys.prefix) / "bin" / "activate"), "<VENV>/bin/activate")
    text = text.replace(str(Path(sys.executable).parent), "<BIN>")
    _golden("local.sbatch", text)


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_script_shape(spec: Path) -> None:
    sub = prepare_submission(RUN_YAML, spec, hyperpod=False)
    s, c = sub.script, sub.cluster
    run = str(sub.run_dir)
    assert f"#SBATCH --nodes={c.nodes}\n" in s
    assert "#SBATCH --ntasks-per-node=1\n" in s
    assert ("#SBATCH --gpus-per-node=" in s) == (c.gpus_per_node > 0)
    assert f"#SBATCH --partition={c.slurm.partition}\n" in s
    assert f"#SBATCH --output={run}/slurm/%j.out\n" in s and f"#SBATCH --error={run}/slurm/%j.err\n" in s
    for line in ("#SBATCH --open-mode=append", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300"):
        assert line + "\n" in s
    assert "srun --kill-on-bad-exit=1" in s
    assert (
        '--rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID-$ATTEMPT-$RUN_NO"'
        in s
    )
    assert "  MASTER_PORT=$(rdzv_port)\n" in s  # no spec pins it: a free port asked of the first node's OS
    assert 'NODES=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))' in s
    nproc = c.gpus_per_node or 1
    assert f"--nproc-per-node={nproc}" in s
    assert '-m mltrain train "$CONFIG"' in s and f"CONFIG={run}/slurm/run.yaml" in s
    if c.container:
        assert f"--container-image={c.container.image}" in s and "--no-container-mount-home" in s
        assert "source " not in s
    else:
        assert "--container-image" not in s
    for bad in nccl_env.KNOWN_BAD:
        assert f"export {bad}=" not in s
    # every export has a comment line right above it saying why
    lines = s.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("export ") and not line.startswith("export PATH="):
            assert lines[i - 1].startswith("# "), line
    subprocess.run(["bash", "-n"], input=s, text=True, check=True)


def test_resolved_config_points_at_cluster_base(tmp_path: Path) -> None:
    sub = prepare_submission(RUN_YAML, ROOT / "configs/clusters/p5e-80.yaml", hyperpod=False)
    assert sub.cfg.base_dir == "/fsx/mltrain" and sub.cfg.run_dir == sub.run_dir == Path("/fsx/mltrain/runs/golden")
    assert sub.config_path == Path("/fsx/mltrain/runs/golden/slurm/run.yaml")


def test_overrides_nodes_time_and_errors(tmp_path: Path) -> None:
    spec = ROOT / "configs/clusters/p5-16.yaml"
    sub = prepare_submission(
        RUN_YAML, spec, overrides=["launch.requeue_grace_s=60"], nodes=4, time="1-00:00:00", hyperpod=False
    )
    assert "#SBATCH --nodes=4\n" in sub.script and "#SBATCH --time=1-00:00:00\n" in sub.script
    assert "#SBATCH --signal=B:USR1@60\n" in sub.script
    with pytest.raises(LaunchError, match="only 16 nodes"):
        prepare_submission(RUN_YAML, spec, nodes=17)
    with pytest.raises(ConfigError, match="--time"):
        prepare_submission(RUN_YAML, spec, time="90 minutes")


def test_cluster_env_override_wins_and_warns(tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(
        "name: c\ninstance_type: p5.48xlarge\nnodes: 2\ngpus_per_node: 8\nrun_base_dir: /fsx/x\n"
        "env: {NCCL_DEBUG: INFO, NCCL_IB_DISABLE: '1', MY_VAR: 'a \"b\"'}\nslurm: {hyperpod: false}\n"
    )
    sub = prepare_submission(RUN_YAML, spec)
    assert 'export NCCL_DEBUG="INFO"' in sub.script and 'export NCCL_DEBUG="WARN"' not in sub.script
    assert 'export MY_VAR="a \\"b\\""' in sub.script
    assert any("NCCL_IB_DISABLE" in w for w in sub.warnings)
    assert "venv" not in sub.script or "source" in sub.script  # no container: activates a venv


@pytest.mark.parametrize(
    ("itype", "efa", "gpu"),
    [
        ("p4d.24xlarge", True, True),
        ("p4de.24xlarge", True, True),
        ("p5.48xlarge", True, True),
        ("p5e.48xlarge", True, True),
        ("p5en.48xlarge", True, True),
        ("g5.8xlarge", True, True),
        ("g5.48xlarge", True, True),
        ("g6e.12xlarge", True, True),
        ("g5.xlarge", False, True),
        ("g6e.xlarge", False, True),
        ("c7i.48xlarge", False, False),
        ("local", False, False),
    ],
)
def test_nccl_env_per_instance(itype: str, efa: bool, gpu: bool) -> None:
    env = {v.name: v for v in nccl_env.default_env(itype)}
    assert ("FI_PROVIDER" in env) == efa
    assert ("TORCH_NCCL_ASYNC_ERROR_HANDLING" in env) == gpu
    if efa:
        assert env["FI_PROVIDER"].value == "efa" and env["FI_EFA_USE_HUGE_PAGE"].value == "0"
    if gpu:
        assert env["NCCL_SOCKET_IFNAME"].value == "^docker,lo,veth"
        assert env["TORCH_NCCL_DUMP_ON_TIMEOUT"].value == "1" and env["NCCL_DEBUG"].value == "WARN"
    assert not set(env) & set(nccl_env.KNOWN_BAD)
    assert all(v.why and "\n" not in v.why for v in env.values())


def test_dry_run_prints_exact_script_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rich.console import Console

    spec = tmp_path / "c.yaml"
    spec.write_text(
        f"name: c\ninstance_type: p5.48xlarge\nnodes: 2\ngpus_per_node: 8\nrun_base_dir: {tmp_path}/base\n"
        "container: {image: /x.sqsh}\nslurm: {hyperpod: false}\n"
    )
    console = Console(width=40)  # narrow: the script must still not be wrapped
    submit_run(RUN_YAML, spec, dry_run=True, console=console)
    out = capsys.readouterr().out
    assert out == prepare_submission(RUN_YAML, spec).script
    assert not (tmp_path / "base").exists()


# ------------------------------------------------------------------ the batch script's recovery logic, fake Slurm
# (fast and exhaustive over the decision table; tests/integration/test_slurm*.py run the same script on a real Slurm)


FAKE_BIN = {
    # srun: the health probe (`srun ... true`) passes; the training step writes the exit reason the test wants,
    # and the failing node's torchrun report (like real torchrun: "exitcode  : -9") into its per-node log
    "srun": """#!/bin/bash
echo "srun $*" >> "$FAKE_LOG"
[ "${@: -1}" = true ] && exit 0
[ -n "$FAKE_REASON" ] && echo "$FAKE_REASON" > "$RUN_DIR_FOR_FAKE/control/exit_reason"
[ -n "$FAKE_FAIL_NODE" ] && echo "  exitcode  : -9 (pid: 1)" > "$MLTRAIN_TORCHRUN_LOG.$FAKE_FAIL_NODE.log"
# Slurm's SIGTERM reaches the ranks too: they write their stop checkpoint (step FAKE_TERM_CKPT), then exit
if [ -n "$FAKE_TERM_CKPT" ]; then
  trap 'd="$RUN_DIR_FOR_FAKE/checkpoints/step_$(printf %08d "$FAKE_TERM_CKPT")"; sleep 0.5; mkdir -p "$d";
        echo "{}" > "$d/COMMITTED"; exit 1' TERM
  echo "training" >> "$FAKE_LOG"
  sleep 30 & wait; exit 1
fi
# rank 0's words when a stop ended training (stdout: the job's .out)
[ -n "$FAKE_STOP_WHY" ] && echo "[mltrain] stop requested ($FAKE_STOP_WHY) at step 33: checkpointing, then exiting"
# the watchdog's stack dumps (rank:file content) and each node's torchrun failure report naming its rank
if [ -n "$FAKE_HANG_DUMPS" ]; then
  mkdir -p "$RUN_DIR_FOR_FAKE/hangs"
  for d in $FAKE_HANG_DUMPS; do
    cp "${d#*:}" "$RUN_DIR_FOR_FAKE/hangs/rank${d%%:*}-$(date +%s).txt"
  done
  printf '  host      : nodeA\n  rank      : 0 (local_rank: 0)\n  exitcode  : 3\n' > "$MLTRAIN_TORCHRUN_LOG.nodeA.log"
  printf '  host      : nodeB\n  rank      : 1 (local_rank: 0)\n  exitcode  : 3\n' > "$MLTRAIN_TORCHRUN_LOG.nodeB.log"
fi
exit "${FAKE_RC:-0}"
""",
    "scontrol": """#!/bin/bash
if [ "$1" = show ] && [ "$2" = hostnames ]; then echo nodeA; echo nodeB; exit 0; fi
if [ "$1" = -o ] && [ "$3" = job ]; then echo "JobId=7 JobState=RUNNING Reason=None ExcNodeList=(null) Restarts=0"; exit 0; fi
if [ "$1" = -o ] && [ "$3" = node ]; then echo "NodeName=$4 State=IDLE"; exit 0; fi
if [ $# = 0 ]; then while read -r l; do echo "stdin $l" >> "$FAKE_LOG"; done; exit 0; fi
echo "scontrol $*" >> "$FAKE_LOG"; exit 0
""",
    "squeue": """#!/bin/bash
exit 0
""",
    "sinfo": """#!/bin/bash
printf 'nodeA idle\\nnodeB idle\\nnodeC idle\\n'
""",
}


def _run_fake(tmp_path: Path, script: str, run_dir: Path, attempt: int, **fake: str) -> tuple[int, str]:
    fb = tmp_path / "fakebin"
    fb.mkdir(exist_ok=True)
    for name, body in FAKE_BIN.items():
        # replace, never rewrite in place: the script's detached hold-release helper of an earlier call
        # may still be running this fake (writing it would fail with "Text file busy")
        tmp = fb / f".{name}.tmp"
        tmp.write_text(body)
        tmp.chmod(0o755)
        os.replace(tmp, fb / name)
    log = tmp_path / "fake.log"
    log.write_text("")
    # the requeue helper sleeps 60 s waiting to be killed by Slurm; here nobody kills it
    script = script.replace("sleep 60  # the requeue", "exit 99  # the requeue")
    env = {
        **os.environ,
        "PATH": f"{fb}:{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "RUN_DIR_FOR_FAKE": str(run_dir),
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "nodeA,nodeB",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_PARTITION": "gpu",
        **({"SLURM_RESTART_COUNT": str(attempt)} if attempt else {}),
        **fake,
    }
    env.pop("SLURM_RESTART_COUNT", None) if not attempt else None
    # stdout and stderr go where Slurm puts them (--output/--error): the script reads its own .out and .err
    (run_dir / "slurm").mkdir(parents=True, exist_ok=True)
    install_batch_helper(run_dir)  # as `mltrain submit` does: the script's decisions and records run from there
    with open(run_dir / "slurm" / "7.out", "a") as out, open(run_dir / "slurm" / "7.err", "a") as err:
        p = subprocess.run(["bash", "-c", script], env=env, stdout=out, stderr=err, timeout=60)
    _stop_detached_helpers(log)
    return p.returncode, log.read_text()


def _stop_detached_helpers(log: Path) -> None:
    """The script's hold-release helper (setsid, its own session) would poll the fake scontrol for up to
    5 minutes after the script exits; nothing here waits for it, so end it (found by its FAKE_LOG)."""
    mark = f"FAKE_LOG={log}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if mark in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "restarts.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_recovery_decisions_with_fake_slurm(tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(
        f"name: c\ninstance_type: p5.48xlarge\nnodes: 2\ngpus_per_node: 8\nrun_base_dir: {tmp_path}\n"
        "container: {image: /x.sqsh}\nslurm: {hyperpod: false}\n"
    )
    sub = prepare_submission(
        RUN_YAML,
        spec,
        overrides=["launch.max_restarts=3", "launch.max_in_place_restarts=1", "launch.max_preemptions=2"],
    )
    run = sub.run_dir
    (run / "checkpoints" / "step_00000020").mkdir(parents=True)
    (run / "checkpoints" / "step_00000020" / "COMMITTED").write_text("{}")
    (run / "checkpoints" / "step_00000030.tmp").mkdir()

    rc, log = _run_fake(tmp_path, sub.script, run, 0, FAKE_REASON="done")
    assert rc == 0 and "requeue" not in log and _records(run) == []
    assert "--container-image=/x.sqsh" in log and "torchrun" in log
    allocs = [json.loads(x) for x in (run / "slurm" / "allocations.jsonl").read_text().splitlines()]
    assert [a["event"] for a in allocs] == ["start", "end"] and allocs[0]["nodes"] == ["nodeA", "nodeB"]
    assert allocs[0]["time_limit_s"] == 24 * 3600

    rc, log = _run_fake(tmp_path, sub.script, run, 0, FAKE_REASON="config_error", FAKE_RC="1")
    assert rc == 2 and "requeue" not in log
    assert _records(run)[-1]["cause"] == "config_error" and _records(run)[-1]["action"] == "none"

    rc, log = _run_fake(tmp_path, sub.script, run, 0, FAKE_REASON="preempted", FAKE_RC="1")
    assert "scontrol requeue 7" in log
    rec = _records(run)[-1]
    assert (rec["cause"], rec["action"], rec["counted"], rec["step"]) == ("preempted", "requeue", False, 20)
    assert rec["slurm_restart_count"] is None

    # preempted again without a new checkpoint: counted as a failure; the next one in a row gives up
    rc, log = _run_fake(tmp_path, sub.script, run, 1, FAKE_REASON="preempted", FAKE_RC="1")
    rec = _records(run)[-1]
    assert (rec["cause"], rec["action"], rec["counted"], rec["slurm_restart_count"]) == (
        "preempted",
        "requeue",
        True,
        1,
    )
    rc, log = _run_fake(tmp_path, sub.script, run, 2, FAKE_REASON="preempted", FAKE_RC="1")
    assert rc == 1 and "requeue 7" not in log and _records(run)[-1]["action"] == "give_up"

    # a SIGKILLed rank on nodeB (its own torchrun says so): restart in place once, then requeue excluding nodeB
    (run / "checkpoints" / "step_00000040").mkdir()
    (run / "checkpoints" / "step_00000040" / "COMMITTED").write_text("{}")
    (run / "restarts.jsonl").unlink()
    rc, log = _run_fake(tmp_path, sub.script, run, 0, FAKE_REASON="", FAKE_RC="137", FAKE_FAIL_NODE="nodeB")
    first, second = _records(run)
    assert (first["cause"], first["node"], first["action"], first["counted"]) == (
        "rank_failure",
        "nodeB",
        "restart_in_place",
        True,
    )
    assert (second["action"], second["node"], second["failures"], second["step"]) == ("requeue", "nodeB", 2, 40)
    assert "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 true" in log  # the health probe ran
    assert (
        log.count("--rdzv-backend") == 2
        and "scontrol requeue 7" in log
        and "requeueing job 7, excluding nodeB" in (run / "slurm" / "7.out").read_text()
    )  # the exclusion itself is made once the job is pending: test_sbatch_requeue_updates.py

    rc, log = _run_fake(tmp_path, sub.script, run, 1, FAKE_REASON="hang", FAKE_RC="1")
    rec = _records(run)[-1]
    assert (rec["cause"], rec["action"], rec["failures"]) == ("hang", "requeue", 3) and log.count("--rdzv-backend") == 1

    # max_restarts=3 used up: give up, no requeue
    rc, log = _run_fake(tmp_path, sub.script, run, 2, FAKE_REASON="failed", FAKE_RC="1")
    assert rc == 1 and "requeue 7" not in log
    assert (_records(run)[-1]["cause"], _records(run)[-1]["action"]) == ("rank_failure", "give_up")

    # `mltrain cancel` marker: never requeued
    (run / "control" / "cancelled").write_text("7\n")
    rc, log = _run_fake(tmp_path, sub.script, run, 0, FAKE_REASON="preempted", FAKE_RC="1")
    assert rc == 0 and "requeue" not in log


def test_unclosed_allocation_is_closed_by_the_next_attempt(tmp_path: Path) -> None:
    """The script was SIGKILLed before it wrote its "end" line: the next attempt closes it at the time of the
    last write to the job's .err (so the pending time in between is not counted as allocated)."""
    spec = tmp_path / "c.yaml"
    spec.write_text(
        f"name: c\ninstance_type: p5.48xlarge\nnodes: 2\ngpus_per_node: 8\nrun_base_dir: {tmp_path}\n"
        "slurm: {hyperpod: false}\n"
    )
    sub = prepare_submission(RUN_YAML, spec)
    run = sub.run_dir
    (run / "slurm").mkdir(parents=True)
    (run / "slurm" / "allocations.jsonl").write_text(
        '{"event": "start", "job_id": "7", "time": 100.0, "attempt": 0, "nodes": ["nodeA","nodeB"], "time_limit_s": 86400}\n'
    )
    err = run / "slurm" / "7.err"
    err.write_text(
        "[mltrain] attempt 0 of job 7 starts\n"
        "slurmstepd: error: *** JOB 7 ON nodeA CANCELLED AT 2026-11-30T12:00:00 DUE TO NODE FAILURE ***\n"
    )
    os.utime(err, (200, 200))
    rc, _ = _run_fake(tmp_path, sub.script, run, 1, FAKE_REASON="done")
    events = [json.loads(x) for x in (run / "slurm" / "allocations.jsonl").read_text().splitlines()]
    assert [(e["event"], e["attempt"]) for e in events] == [("start", 0), ("end", 0), ("start", 1), ("end", 1)]
    assert events[1]["time"] == 200 and events[1]["recovered"] is True
    # the previous attempt's requeue was Slurm's own (node failure): recorded now, so the count agrees with Slurm
    (rec,) = _records(run)
    assert (rec["cause"], rec["action"], rec["attempt"]) == ("node_failure", "requeue", 0)


# faulthandler's dumps (all threads; the watchdog thread is the current one): the stuck rank's main thread is in
# its own code, a peer's waits in torch's autograd / collectives
STUCK_DUMP = """mltrain watchdog: rank 1 finished no step for 6s (hang_timeout_s=5.0); stacks of all threads:

Current thread 0x00007f0000000002 (most recent call first):
  File "/x/mltrain/train/faults.py", line 163 in _fire
  File "/usr/lib/python3.11/threading.py", line 1038 in _bootstrap

Thread 0x00007f0000000001 (most recent call first):
  File "/x/mltrain/train/faults.py", line 233 in maybe_fire
  File "/x/mltrain/train/trainer.py", line 390 in train_loop
  File "/x/mltrain/__main__.py", line 3 in <module>
"""
WAITING_DUMP = STUCK_DUMP.replace("rank 1", "rank 0").replace(
    '  File "/x/mltrain/train/faults.py", line 233 in maybe_fire\n',
    '  File "/v/torch/autograd/graph.py", line 829 in _engine_run_backward\n',
)


def _fake_run_dir(tmp_path: Path, **overrides: str):
    spec = tmp_path / "c.yaml"
    spec.write_text(
        f"name: c\ninstance_type: p5.48xlarge\nnodes: 2\ngpus_per_node: 8\nrun_base_dir: {tmp_path}\n"
        "container: {image: /x.sqsh}\nslurm: {hyperpod: false}\n"
    )
    sub = prepare_submission(RUN_YAML, spec, overrides=[f"{k}={v}" for k, v in overrides.items()])
    (sub.run_dir / "checkpoints" / "step_00000030").mkdir(parents=True)
    (sub.run_dir / "checkpoints" / "step_00000030" / "COMMITTED").write_text("{}")
    return sub


@pytest.mark.parametrize(
    "why, counted, cause",
    [
        ("SIGTERM", True, "rank_failure"),  # torchrun's agent tearing its workers down: nobody asked
        ("a signal to another rank", True, "rank_failure"),
        ("SIGUSR1", False, "preempted"),  # scancel --signal=USR1 to the ranks: asked
        ("mltrain stop", False, "preempted"),  # the stop file: a user asked
        ("", False, "preempted"),  # no words from the trainer (a script run): as before
    ],
)
def test_a_stop_is_a_preemption_only_when_asked_for(tmp_path: Path, why: str, counted: bool, cause: str) -> None:
    """A rank that stopped on a SIGTERM the batch script never got (torchrun's teardown, e.g. after a port
    collision) is a counted failure, not a preemption; a stop Slurm or a user asked for is a preemption."""
    sub = _fake_run_dir(tmp_path, **{"launch.max_in_place_restarts": "0"})
    rc, log = _run_fake(tmp_path, sub.script, sub.run_dir, 0, FAKE_REASON="preempted", FAKE_RC="1", FAKE_STOP_WHY=why)
    (rec,) = _records(sub.run_dir)
    assert (rec["cause"], rec["action"], rec["counted"], rec["step"]) == (cause, "requeue", counted, 30)
    assert "scontrol requeue 7" in log
    out = (sub.run_dir / "slurm" / "7.out").read_text()
    assert ("which neither Slurm nor a user sent" in out) == counted


def test_usr1_to_the_batch_script_is_a_preemption_whatever_the_trainer_saw(tmp_path: Path) -> None:
    """Slurm's own preemption warning (USR1 to this script, e.g. the time limit): a preemption."""
    sub = _fake_run_dir(tmp_path)
    script = sub.script.replace("  SRUN_PID=$!\n", "  SRUN_PID=$!\n  kill -USR1 $$\n", 1)
    rc, _ = _run_fake(tmp_path, script, sub.run_dir, 0, FAKE_REASON="preempted", FAKE_RC="1", FAKE_STOP_WHY="SIGTERM")
    (rec,) = _records(sub.run_dir)
    assert (rec["cause"], rec["counted"]) == ("preempted", False)


@pytest.mark.parametrize(
    "dumps, node",
    [
        ("0:WAIT 1:STUCK", "nodeB"),  # rank 1 on nodeB is the one not waiting for its peers
        ("1:STUCK", "nodeB"),
        ("0:WAIT", "nodeA"),  # the only dump
        ("0:STUCK 1:STUCK", None),  # two candidates: no guess
    ],
)
def test_hang_records_the_stuck_ranks_node(tmp_path: Path, dumps: str, node: str | None) -> None:
    """A hang restart records the node of the stuck rank the stack dumps name."""
    files = {"STUCK": tmp_path / "stuck.txt", "WAIT": tmp_path / "wait.txt"}
    files["STUCK"].write_text(STUCK_DUMP)
    files["WAIT"].write_text(WAITING_DUMP)
    spec = " ".join(f"{d.split(':')[0]}:{files[d.split(':')[1]]}" for d in dumps.split())
    sub = _fake_run_dir(tmp_path)
    # an older attempt's dump is not this run's
    (sub.run_dir / "hangs").mkdir()
    (sub.run_dir / "hangs" / "rank0-1000.txt").write_text(STUCK_DUMP)
    rc, log = _run_fake(tmp_path, sub.script, sub.run_dir, 0, FAKE_REASON="hang", FAKE_RC="1", FAKE_HANG_DUMPS=spec)
    (rec,) = _records(sub.run_dir)
    assert (rec["cause"], rec["action"], rec["node"]) == ("hang", "requeue", node)
    assert "ExcNodeList" not in log  # a hang's node is recorded, not excluded


def test_sigterm_record_names_the_checkpoint_the_ranks_commit_on_the_way_out(tmp_path: Path) -> None:
    """`scontrol requeue` mid-run: the batch script and the ranks get SIGTERM together; the ranks' stop checkpoint
    (step 50) commits after that, and the record names it (not the older step 30)."""
    sub = _fake_run_dir(tmp_path)
    run = sub.run_dir
    fb = tmp_path / "fakebin"
    _run_fake(tmp_path, "true", run, 0)  # writes the fake Slurm commands
    log = tmp_path / "fake.log"
    log.write_text("")
    env = {
        **os.environ,
        "PATH": f"{fb}:{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "RUN_DIR_FOR_FAKE": str(run),
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "nodeA,nodeB",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_PARTITION": "gpu",
        "FAKE_TERM_CKPT": "50",
    }
    env.pop("SLURM_RESTART_COUNT", None)
    err = run / "slurm" / "7.err"
    with open(run / "slurm" / "7.out", "a") as out, open(err, "a") as errf:
        p = subprocess.Popen(["bash", "-c", sub.script], env=env, stdout=out, stderr=errf, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while "training" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            with open(err, "a") as f:  # slurmstepd's words, written before it signals
                f.write(
                    "slurmstepd: error: *** JOB 7 ON nodeA CANCELLED AT 2026-01-01T00:00:00 DUE TO JOB REQUEUE ***\n"
                )
            os.killpg(p.pid, signal.SIGTERM)
            assert p.wait(timeout=30) == 0
        finally:
            _stop_detached_helpers(log)
    (rec,) = _records(run)
    assert (rec["cause"], rec["action"], rec["counted"]) == ("admin_requeue", "requeue", False)
    assert rec["step"] == rec["resume_step"] == 50
    assert "SIGTERM: recorded admin_requeue, resumes from step 50" in (run / "slurm" / "7.out").read_text()
