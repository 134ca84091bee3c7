"""Bring your own script on a REAL Slurm 22.05 (scripts/local-slurm/up.sh; 2 nodes x 1 CPU process, gloo), through
`mltrain submit RUN.yaml --cluster local.yaml`:

- the example Hugging Face Trainer script (examples/hf_trainer, a tiny random Qwen2): `scancel --batch --signal=USR1`
  mid-run -> the batch script touches control/stop -> the callback saves a checkpoint and exits 75 -> preempted ->
  requeue -> the next attempt resumes from that checkpoint and finishes; status shows its steps, loss, 1 restart;
- a plain script that ignores mltrain's API: one rank SIGKILLs itself on the first start -> torchrun restarted in
  place -> finishes; exit code 2 -> a config error: the job FAILS, is not requeued, and status says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slurm_fixture import (
    FINAL_STATES,
    job_field,
    job_state,
    records,
    wait_job,
)

from mltrain.launch.slurm import prepare_submission

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hf_trainer"
SUBMITTED: list[str] = []


def _active(job: str) -> bool:
    state = job_state(job)[0]
    return bool(state) and state not in FINAL_STATES


PLAIN = """\
import os, sys, time
from pathlib import Path

rank = int(os.environ["RANK"])
mode, marker = sys.argv[1], Path(sys.argv[2])
Path(f"where{rank}.json").write_text(
    '{"cwd": "%s", "node": "%s", "run_dir": "%s"}' % (os.getcwd(), os.environ["SLURMD_NODENAME"], os.environ["MLTRAIN_RUN_DIR"])
)
if mode == "exit2" and rank == 0:
    print("error: --lr must be positive", file=sys.stderr)
    sys.exit(2)
if mode == "kill" and rank == 1 and not marker.exists():
    marker.write_text(os.environ["SLURMD_NODENAME"])  # killed once, on this node
    time.sleep(0.5)
    os.kill(os.getpid(), 9)
time.sleep(60 if mode == "sleep" else 3)
print(f"rank {rank}: finished")
"""


class Work:
    """A work dir with the local cluster spec (runs under it) and `mltrain` as a subprocess."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cluster = root / "local.yaml"
        self.cluster.write_text(
            (ROOT / "configs/clusters/local.yaml").read_text().replace("run_base_dir: .", f"run_base_dir: {root}")
        )

    def mltrain(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            [sys.executable, "-m", "mltrain", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "220", **(env or {})},
            timeout=120,
        )
        if check:
            assert p.returncode == 0, f"mltrain {' '.join(args)}: {p.stdout}\n{p.stderr}"
        return p

    def submit(self, run_yaml: Path, *sets: str, env: dict | None = None) -> tuple[str, Path]:
        """`mltrain submit`; `env` reaches the batch script and the ranks (sbatch exports the environment)."""
        args = ["submit", str(run_yaml), "--cluster", str(self.cluster)]
        for s in sets:
            args += ["--set", s]
        out = self.mltrain(*args, env=env).stdout
        job_id = out.split("submitted job ", 1)[1].split(":", 1)[0]
        SUBMITTED.append(job_id)
        name = next(s.split("=", 1)[1] for s in sets if s.startswith("name="))
        return job_id, self.root / "runs" / name

    def status_cells(self, run: Path) -> tuple[dict[str, str], str]:
        out = self.mltrain("status", str(run)).stdout
        header = next(line.split() for line in out.splitlines() if line.startswith("run "))
        row = next(line.split() for line in out.splitlines() if line.startswith(run.name + " "))
        return dict(zip(header, row, strict=False)), " ".join(out.split())


@pytest.fixture(scope="module")
def work(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Work]:
    yield Work(tmp_path_factory.mktemp("slurm-script"))
    for job in SUBMITTED:  # nothing of ours left in the queue, whatever failed above
        if _active(job):
            subprocess.run(["scancel", job], capture_output=True)


def _metrics(run: Path) -> list[dict]:
    return records(run / "metrics.jsonl")


def _plain_run(work: Work, name: str) -> Path:
    d = work.root / name
    d.mkdir()
    (d / "plain.py").write_text(PLAIN)
    mode = next(m for m in ("exit2", "sleep", "kill") if m in name)
    (d / "run.yaml").write_text(f"name: {name}\nscript: {{path: plain.py, args: [{mode}, {d / 'marker'}]}}\n")
    return d / "run.yaml"


def test_script_run_passes_sbatch_test_only(work: Work) -> None:
    sub = prepare_submission(EXAMPLE / "run.yaml", work.cluster)
    script = work.root / "test-only.sbatch"
    script.write_text(sub.script)
    p = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True)
    assert p.returncode == 0 and "to start at" in p.stderr, p.stderr


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="transformers is not installed")
def test_hf_trainer_usr1_checkpoint_requeue_resume(work: Work) -> None:
    """The commands of docs/own-script.md: mltrain submit examples/hf_trainer/run.yaml; scancel --batch --signal=USR1 JOB."""
    args = '["--max_steps", "14", "--save_steps", "100", "--slow_step_s", "0.3", "--model", "qwen2"]'
    job, run = work.submit(EXAMPLE / "run.yaml", "name=hfslurm", f"script.args={args}")
    deadline = time.monotonic() + 180
    while not any(r.get("kind") == "train" and r["step"] >= 3 for r in _metrics(run)):
        assert time.monotonic() < deadline and _active(job), (job_state(job), _metrics(run)[-3:])
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    assert wait_job(job, 240) == "COMPLETED"
    out = (run / "slurm" / f"{job}.out").read_text()
    assert "USR1: asking the trainer to checkpoint and stop" in out and "released the requeue hold" in out
    recs = _metrics(run)
    first_exit = next(r for r in recs if r.get("kind") == "exit")
    stop = first_exit["step"]
    assert first_exit["reason"] == "preempted" and 3 <= stop < 14, first_exit
    # the batch script's record names the script's own checkpoint (checkpoint-N with the callback's marker)
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"], rec["step"]) == ("preempted", "requeue", False, stop)
    assert job_field(job, "Restarts") == "1"
    starts = [r for r in recs if r.get("kind") == "start"]
    assert [s["step"] for s in starts] == [0, stop]  # the second attempt resumed from the USR1 checkpoint
    assert starts[1]["resumed_from"] == str(run / "checkpoints" / f"checkpoint-{stop}")
    assert [r["reason"] for r in recs if r.get("kind") == "exit"] == ["preempted", "done"]
    assert (run / "control" / "exit_reason").read_text().strip() == "done"
    cells, text = work.status_cells(run)
    assert cells["state"] == "done" and cells["step"] == "14/14" and cells["rst"] == "1", text
    assert 0 < float(cells["loss"]) < 6, text
    logs = work.mltrain("logs", str(run)).stdout
    assert "training finished" in logs and "USR1" in logs

    # submitted again, the finished run says so and trains nothing (no step 15, no checkpoint-15)
    again, _ = work.submit(EXAMPLE / "run.yaml", "name=hfslurm", f"script.args={args}")
    assert wait_job(again, 180) == "COMPLETED"
    out = (run / "slurm" / f"{again}.out").read_text()
    assert "hfslurm already finished: step 14 of 14 (checkpoint-14); nothing to train" in out, out[-3000:]
    assert max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*")) == 14
    assert _metrics(run) == recs  # no record: no start, no restart counted
    cells, text = work.status_cells(run)
    assert cells["state"] == "done" and cells["step"] == "14/14" and cells["rst"] == "1", text


def test_deepspeed_usr1_requeue_resume_matches_an_uninterrupted_run(work: Work) -> None:
    """The example with its ds_config.json (DeepSpeed ZeRO-2 on CPU: DS_ACCELERATOR=cpu, gloo) on 2 nodes: USR1
    mid-run -> DeepSpeed checkpoint -> exit 75 -> requeue -> the next attempt resumes; its losses are those of
    the same run uninterrupted (under `mltrain train --nproc 2` on this machine, alongside the job)."""
    ds_env = {"DS_ACCELERATOR": "cpu"}
    args = ["--max_steps", "6", "--save_steps", "100", "--deepspeed", str(EXAMPLE / "ds_config.json")]
    ref_yaml = work.root / "dsref.yaml"
    ref_yaml.write_text(
        json.dumps(
            {"name": "dsref", "base_dir": str(work.root), "script": {"path": str(EXAMPLE / "train.py"), "args": args}}
        )
    )
    ref = subprocess.Popen(
        [sys.executable, "-m", "mltrain", "train", str(ref_yaml), "--nproc", "2"],
        cwd=work.root,
        env={**os.environ, **ds_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    slow = json.dumps([*args, "--slow_step_s", "0.5"])
    job, run = work.submit(EXAMPLE / "run.yaml", "name=dsslurm", f"script.args={slow}", env=ds_env)
    deadline = time.monotonic() + 240
    while not any(r.get("kind") == "train" and r["step"] >= 2 for r in _metrics(run)):
        assert time.monotonic() < deadline and _active(job), (job_state(job), _metrics(run)[-3:])
        time.sleep(0.2)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    assert wait_job(job, 300) == "COMPLETED", (run / "slurm" / f"{job}.out").read_text()[-3000:]
    recs = _metrics(run)
    stop = next(r for r in recs if r.get("kind") == "exit")["step"]
    assert 2 <= stop < 6
    assert (run / "checkpoints" / f"checkpoint-{stop}" / f"global_step{stop}").is_dir()  # DeepSpeed's engine saved
    assert job_field(job, "Restarts") == "1"
    assert [s["step"] for s in recs if s.get("kind") == "start"] == [0, stop]
    assert [r["reason"] for r in recs if r.get("kind") == "exit"] == ["preempted", "done"]
    ref_out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_out[-3000:]

    def losses(d: Path) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in _metrics(d) if r.get("kind") == "train"}

    expected = losses(work.root / "runs" / "dsref")
    assert sorted(expected) == list(range(1, 7)) and losses(run) == expected


def test_plain_script_sigkilled_rank_restarts_in_place_and_finishes(work: Work) -> None:
    run_yaml = _plain_run(work, "plainkill")
    job, run = work.submit(run_yaml, "name=plainkill")
    assert wait_job(job, 180) == "COMPLETED"
    killed_on = (run_yaml.parent / "marker").read_text()  # rank 1 did kill itself once, there
    where = {r: json.loads((run_yaml.parent / f"where{r}.json").read_text()) for r in (0, 1)}
    assert {w["cwd"] for w in where.values()} == {str(run_yaml.parent)}  # started in the run config's directory
    assert {w["run_dir"] for w in where.values()} == {str(run)}
    # the template restarts torchrun in place first (healthy nodes), blaming the node whose own rank died
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"], rec["node"]) == (
        "rank_failure",
        "restart_in_place",
        True,
        killed_on,
    )
    assert rec["step"] is None  # the plain script saves no checkpoint
    assert job_field(job, "Restarts") == "0"
    assert (run / "control" / "exit_reason").read_text().strip() == "done"
    cells, text = work.status_cells(run)
    assert cells["state"] == "done" and cells["rst"] == "1", text


def test_plain_script_exit_2_is_a_config_error_not_requeued(work: Work) -> None:
    run_yaml = _plain_run(work, "plainexit2")
    job, run = work.submit(run_yaml, "name=plainexit2")
    assert wait_job(job, 180) == "FAILED"
    assert job_field(job, "Restarts") == "0" and job_field(job, "ExitCode") == "2:0"
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"]) == ("config_error", "none", False)
    assert (run / "control" / "exit_reason").read_text().strip() == "config_error"
    assert json.loads((run / "control" / "ranks" / "0.json").read_text())["code"] == 2
    _, text = work.status_cells(run)
    assert "config error, not requeued: --lr must be positive" in text and "preempt" not in text, text


def test_cancel_of_a_script_run_is_not_requeued(work: Work) -> None:
    run_yaml = _plain_run(work, "plainsleep")
    job, run = work.submit(run_yaml, "name=plainsleep")
    deadline = time.monotonic() + 60
    while not (run_yaml.parent / "where1.json").exists():  # both ranks started
        assert time.monotonic() < deadline and _active(job), job_state(job)
        time.sleep(0.2)
    assert "it will not be requeued" in work.mltrain("cancel", str(run)).stdout
    assert wait_job(job, 60) == "CANCELLED"
    assert job_field(job, "Restarts") == "0"
    cells, text = work.status_cells(run)
    assert cells["state"] == "cancelled" and "cancelled with mltrain cancel" in text, text
