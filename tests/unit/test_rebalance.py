"""`mltrain fleet rebalance` on synthetic fleet records and run dirs: who gets the free nodes, which node
counts a run cannot resume on, --json, and --apply's refusal paths.

The run dirs are real files read by the real `run_status`; only the scheduler is a fake (mltrain.launch.status's
query_job, and --apply's Scheduler): these tests run without Slurm, and the fake lets a test play a trainer that
stops at a checkpoint, one that stops without it and a job that never leaves the queue.
tests/integration/test_slurm_fleet.py runs the same on the local Slurm with real trainers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

import mltrain.launch.status as status_mod
from mltrain import rundir
from mltrain.errors import ClusterError, LaunchError
from mltrain.launch.fleet_state import FleetState, ModelRecord, read_fleet_state, write_fleet_state
from mltrain.launch.rebalance import propose, rebalance_command, resume_refusal
from mltrain.launch.slurm import CANCELLED_FILE

NOW = time.time()
TINY = {"preset": "tiny", "vocab_size": 1024, "hidden_size": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn_hidden_size": 128}  # fmt: skip
JOBS: dict[str, str] = {}  # job id -> the fake scheduler's state


@pytest.fixture(autouse=True)
def fake_squeue(monkeypatch):
    """run_status asks Slurm about each run's job: answered from JOBS (no Slurm in unit tests)."""
    JOBS.clear()

    def query(job_id):
        st = JOBS.get(str(job_id))
        return None if st is None else {"state": st, "reason": "None", "nodes": "n1", "restarts": "0", "source": "fake"}

    monkeypatch.setattr(status_mod, "query_job", query)


def _console() -> Console:
    return Console(width=200, record=True, color_system=None)


def _write_jsonl(path: Path, recs: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for r in recs:
            f.write(json.dumps(r) + "\n")


def _run(base: Path, name: str, job: str, job_state: str, step: int, total: int, step_s: float,
         micro: int = 2, accum: int = 2, world: int = 1, done: bool = False) -> Path:  # fmt: skip
    """A run dir as a Slurm trainer leaves it: resolved config, job record, metrics (and a checkpoint at step)."""
    d = base / "runs" / name
    (d / "slurm").mkdir(parents=True)
    cfg = {"name": name, "train": {"max_steps": total, "micro_batch_size": micro, "grad_accum_steps": accum}}
    (d / "slurm" / "run.yaml").write_text(yaml.safe_dump(cfg))
    _write_jsonl(d / "slurm" / "jobs.jsonl", [{"event": "submit", "job_id": job, "time": NOW - 100, "nodes": 1}])
    t0 = NOW - 60
    recs = [{"kind": "start", "step": 0, "time": t0, "world_size": world}]
    recs += [
        {"kind": "train", "step": s, "loss": 5.0, "step_time_s": step_s, "tokens_per_s": 100.0, "time": t0 + s}
        for s in range(1, step + 1)
    ]
    if done:
        recs.append({"kind": "exit", "step": step, "reason": "done", "time": t0 + step + 1})
        (d / "control").mkdir()
        (d / rundir.EXIT_REASON_FILE).write_text("done\n")
    _write_jsonl(d / "metrics.jsonl", recs)
    JOBS[job] = job_state
    _checkpoint(d, step, world, micro, accum)
    return d


def _checkpoint(run: Path, step: int, world: int, micro: int, accum: int) -> None:
    ck = run / "checkpoints" / f"step_{step:08d}"
    ck.mkdir(parents=True)
    state = {"world_size": world, "micro_batch_size": micro, "grad_accum_steps": accum, "loader": {"samples": 0}}
    (ck / "trainer_state.json").write_text(json.dumps(state))
    (ck / "COMMITTED").write_text("{}")


def _fleet(tmp_path: Path, names: list[str], cluster_nodes: int = 3, **model_extra) -> tuple[Path, Path]:
    """Fleet file (instance type `local`: 1 accelerator per node), cluster spec (1 process per node) and a run
    YAML per model."""
    models = []
    for n in names:
        run_yaml = tmp_path / f"{n}.yaml"
        run_yaml.write_text(yaml.safe_dump({"name": n, "model": TINY, "train": {"device": "cpu"}}))
        models.append({"name": n, "arch": TINY, "tokens": 1e6, "seq_len": 32, "mfu": 0.5, "run_config": str(run_yaml),
                       **model_extra.get(n, {})})  # fmt: skip
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({
        "cluster": {"instance_type": "local", "nodes": cluster_nodes},
        "instance_types": {"local": {"accelerators": 1, "accelerator": "cpu", "gpu_memory_gib": 64, "vcpus": 2,
                                     "memory_gib": 8, "network_gbps": 10, "efa_interfaces": 0,
                                     "peak_bf16_tflops": 0.1}},
        "models": models,
    }))  # fmt: skip
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({
        "name": "t", "instance_type": "local", "nodes": cluster_nodes, "gpus_per_node": 0,
        "run_base_dir": str(tmp_path), "slurm": {"partition": "local", "nproc_per_node": 1},
    }))  # fmt: skip
    return fleet, cluster


def _record(tmp_path: Path, models: dict[str, tuple[Path, int, float]]) -> Path:
    """The fleet record fleet submit would have written: name -> (run dir, nodes, planned finish)."""
    state = FleetState(fleet="f", cluster="c", submitted_at=NOW - 100, price_per_node_hour=None, cluster_nodes=3)
    for name, (run, nodes, finish) in models.items():
        state.models[name] = ModelRecord(
            run_dir=str(run), nodes=nodes, planned_days=1.0, submitted_at=NOW - 100, planned_finish=finish,
            job_ids=[json.loads((run / "slurm" / "jobs.jsonl").read_text().splitlines()[-1])["job_id"]],
        )  # fmt: skip
    path = tmp_path / "fleets" / "fleet.json"
    write_fleet_state(path, state)
    return path


def _a_done_b_behind(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """a finished on 1 node; b runs on 1 node, 100 steps left at 2 s, due in 60 s: behind. Global batch of b is
    4 (1 rank x micro 2 x accum 2): 2 nodes can keep it (micro 2 x 2 ranks), 3 cannot."""
    fleet, cluster = _fleet(tmp_path, ["a", "b"])
    a = _run(tmp_path, "a", "11", "COMPLETED", 4, 4, 1.0, done=True)
    b = _run(tmp_path, "b", "12", "RUNNING", 20, 120, 2.0)
    rec = _record(tmp_path, {"a": (a, 1, NOW + 3600), "b": (b, 1, NOW + 60)})
    return fleet, cluster, rec, b


def test_a_finished_models_node_goes_to_the_one_behind_and_a_count_it_cannot_resume_on_is_skipped(tmp_path):
    fleet, cluster, _, _ = _a_done_b_behind(tmp_path)
    prop, _ = propose(fleet, cluster, now=NOW)
    a, b = prop.models
    assert (a.state, a.old_nodes, a.new_nodes) == ("done", 1, 0)
    assert prop.free_nodes == 2 and prop.left_free == 1
    assert (b.state, b.old_nodes, b.new_nodes) == ("running", 1, 2)
    # 100 steps x 2 s on 1 node = 200 node-seconds; on 2 nodes 100 s
    assert b.remaining_node_s == pytest.approx(200.0)
    assert b.old_finish == pytest.approx(NOW + 200) and b.new_finish == pytest.approx(NOW + 100)
    assert "behind its date by" in b.why and "+1 free node" in b.why
    assert b.skipped == [
        "3 nodes: its global batch of 4 sequences does not split over 3 data-parallel ranks x micro batch 2"
    ]
    # the planned layout at 2 nodes, as fleet submit would pass it
    assert "parallel.dp_shard=2" in b.overrides and "parallel.tp=1" in b.overrides


def test_the_table_shows_old_and_new_nodes_and_finishes(tmp_path):
    fleet, cluster, _, _ = _a_done_b_behind(tmp_path)
    c = _console()
    rebalance_command(fleet, cluster, console=c)
    text = c.export_text()
    row = next(line for line in text.splitlines() if line.startswith("b "))
    assert "1 -> 2" in row and "20/120" in row and "behind its date" in row
    assert "b: skipped 3 nodes: its global batch of 4 sequences" in text
    assert "2 free" in text and "nothing to move" not in text


def test_behind_model_gets_the_node_before_one_that_finishes_later_but_is_on_time(tmp_path):
    fleet, cluster = _fleet(tmp_path, ["late", "ontime"])
    late = _run(tmp_path, "late", "21", "RUNNING", 10, 60, 2.0)  # 100 s left, due in 10 s
    ontime = _run(tmp_path, "ontime", "22", "RUNNING", 10, 210, 2.0)  # 400 s left, due in an hour
    _record(tmp_path, {"late": (late, 1, NOW + 10), "ontime": (ontime, 1, NOW + 3600)})
    prop, _ = propose(fleet, cluster, now=NOW)
    assert [(m.name, m.old_nodes, m.new_nodes) for m in prop.models] == [("late", 1, 2), ("ontime", 1, 1)]
    assert prop.models[1].why.startswith("ahead of its date") and "the free nodes went to late" in prop.models[1].why


def test_max_nodes_in_the_fleet_file_bounds_the_growth(tmp_path):
    fleet, cluster = _fleet(tmp_path, ["a", "b"], b={"max_nodes": 1})
    a = _run(tmp_path, "a", "11", "COMPLETED", 4, 4, 1.0, done=True)
    b = _run(tmp_path, "b", "12", "RUNNING", 20, 120, 2.0)
    _record(tmp_path, {"a": (a, 1, NOW), "b": (b, 1, NOW + 60)})
    prop, _ = propose(fleet, cluster, now=NOW)
    assert prop.models[1].new_nodes == 1 and "at its max of 1 nodes" in prop.models[1].why
    assert not prop.moves


def test_nothing_to_move_when_every_node_is_busy(tmp_path):
    fleet, cluster = _fleet(tmp_path, ["a", "b"])
    a = _run(tmp_path, "a", "11", "RUNNING", 4, 40, 1.0)
    b = _run(tmp_path, "b", "12", "RUNNING", 20, 120, 2.0)
    rec = _record(tmp_path, {"a": (a, 1, NOW), "b": (b, 2, NOW + 60)})
    before = rec.read_text()
    c = _console()
    prop = rebalance_command(fleet, cluster, apply=True, console=c, scheduler=_NoCalls())
    text = c.export_text()
    assert not prop.moves and prop.free_nodes == 0
    assert "nothing to move" in text and "no free node" in text
    assert rec.read_text() == before


def test_a_pending_run_is_not_moved(tmp_path):
    fleet, cluster = _fleet(tmp_path, ["a", "b"])
    a = _run(tmp_path, "a", "11", "COMPLETED", 4, 4, 1.0, done=True)
    b = _run(tmp_path, "b", "12", "PENDING", 0, 120, 2.0)
    _record(tmp_path, {"a": (a, 1, NOW), "b": (b, 1, NOW + 60)})
    prop, _ = propose(fleet, cluster, now=NOW)
    assert not prop.moves and prop.models[1].why.startswith("pending: not moved")


def test_json_keys(tmp_path):
    fleet, cluster, _, _ = _a_done_b_behind(tmp_path)
    c = _console()
    rebalance_command(fleet, cluster, json_out=True, console=c)
    d = json.loads(c.export_text())
    assert set(d) >= {"fleet", "cluster", "record", "time", "cluster_nodes", "free_nodes", "left_free", "models",
                      "nothing_to_move", "notes"}  # fmt: skip
    assert d["nothing_to_move"] is False
    b = d["models"][1]
    assert set(b) >= {"name", "run_dir", "state", "step", "total_steps", "old_nodes", "new_nodes", "old_finish",
                      "new_finish", "planned_finish", "remaining_node_s", "why", "skipped", "moves"}  # fmt: skip
    assert (b["old_nodes"], b["new_nodes"], b["moves"]) == (1, 2, True)


def test_no_record_or_another_instance_type_is_one_line(tmp_path):
    fleet, cluster = _fleet(tmp_path, ["a"])
    with pytest.raises(ClusterError, match="no fleet record: `mltrain fleet submit"):
        propose(fleet, cluster)
    cluster.write_text(cluster.read_text().replace("instance_type: local", "instance_type: p5.48xlarge"))
    with pytest.raises(ClusterError, match="instance_type p5.48xlarge differs from the fleet's local"):
        propose(fleet, cluster)


def test_resume_refusal_names_layout_and_batch_reasons():
    from mltrain.launch.rebalance import _ResumeShape

    flat = _ResumeShape(global_batch=12, micro_batch_size=2, model_parallel=(1, 1, 1), dp_shard_fixed=None,
                        script=False)  # fmt: skip
    assert resume_refusal(flat, 4, 2, None) == (
        "its global batch of 12 sequences does not split over 8 data-parallel ranks x micro batch 2"
    )
    assert resume_refusal(flat, 3, 1, None) is None and resume_refusal(flat, 2, 1, {"tp": 1, "cp": 1, "pp": 1}) is None
    assert "the run's tp 1" in resume_refusal(flat, 2, 1, {"tp": 2, "cp": 1, "pp": 1})
    pinned = _ResumeShape(12, 2, (1, 1, 1), dp_shard_fixed=2, script=False)
    assert resume_refusal(pinned, 3, 1, None) == "its parallel.dp_shard is fixed at 2"
    tp2 = _ResumeShape(12, 2, (2, 1, 1), None, False)
    assert resume_refusal(tp2, 3, 1, {"tp": 2, "cp": 1, "pp": 1}) == "3 ranks do not divide into tp 2 x cp 1 x pp 1"
    assert "script run" in resume_refusal(_ResumeShape(12, 2, (1, 1, 1), None, True), 2, 1, None)


# --------------------------------------------------------------------------- --apply with a fake scheduler


class _NoCalls:
    def state(self, job_id):
        raise AssertionError("no scheduler call expected")

    def submit(self, *a, **k):
        raise AssertionError("no submit expected")


class _FakeSlurm:
    """Plays the job and its trainer: while `running_polls` last the job is RUNNING; then the trainer has
    answered the stop file (`stop_step`: the exit record it writes; `ckpt_step`: the checkpoint it committed,
    None for none) and the job is gone. submit() records the call and the new job as real submit_run does."""

    def __init__(self, run: Path, running_polls: int, stop_step: int | None = None, ckpt_step: int | None = None):
        self.run, self.left, self.stop_step, self.ckpt_step = run, running_polls, stop_step, ckpt_step
        self.submits: list[tuple] = []
        self.stop_seen: str | None = None
        self.marked_cancelled = False  # the batch script would not requeue the stopped job

    def state(self, job_id):
        if self.left > 0:
            self.left -= 1
            return "RUNNING"
        if self.stop_step is not None and self.stop_seen is None:
            stop = self.run / rundir.STOP_FILE
            self.stop_seen = stop.read_text() if stop.exists() else ""
            self.marked_cancelled = (self.run / CANCELLED_FILE).exists()
            stop.unlink(missing_ok=True)  # rank 0 consumes it
            _write_jsonl(self.run / "metrics.jsonl", [
                {"kind": "exit", "step": self.stop_step, "reason": "preempted", "time": time.time()}
            ])  # fmt: skip
            if self.ckpt_step is not None:
                _checkpoint(self.run, self.ckpt_step, 1, 2, 2)
        return "COMPLETED"

    def submit(self, run_yaml, cluster_yaml, overrides, nodes, console):
        self.submits.append((Path(run_yaml).name, nodes, list(overrides)))
        (self.run / CANCELLED_FILE).unlink(missing_ok=True)
        _write_jsonl(self.run / "slurm" / "jobs.jsonl", [{"event": "submit", "job_id": "99", "time": time.time()}])
        JOBS["99"] = "PENDING"
        return "99"


def test_apply_stops_at_a_checkpoint_resubmits_and_updates_the_record_then_nothing_to_move(tmp_path):
    fleet, cluster, rec, b = _a_done_b_behind(tmp_path)
    fake = _FakeSlurm(b, running_polls=3, stop_step=23, ckpt_step=23)
    c = _console()
    rebalance_command(fleet, cluster, apply=True, console=c, scheduler=fake, poll_s=0.01, now=NOW)
    text = c.export_text()
    assert fake.stop_seen == "mltrain fleet rebalance\n" and fake.marked_cancelled
    assert len(fake.submits) == 1 and fake.submits[0][:2] == ("b.yaml", 2)
    assert "parallel.dp_shard=2" in fake.submits[0][2]
    assert "b: moved 1 -> 2 nodes at step 23: job 99" in text
    state = read_fleet_state(rec)
    assert state.models["b"].nodes == 2 and state.models["b"].job_ids == ["12", "99"]
    assert state.models["b"].planned_finish == pytest.approx(NOW + 100)  # the proposal's clock (NOW: module import)
    (ev,) = state.events
    assert {k: ev[k] for k in ("model", "from", "to", "nodes", "checkpoint_step", "job_id", "freed_by")} == {
        "model": "b", "from": 1, "to": 2, "nodes": 1, "checkpoint_step": 23, "job_id": "99", "freed_by": ["a"]
    }  # fmt: skip
    # again: b's new job is pending, a's node is in use: nothing to move, nothing done
    before = rec.read_text()
    c2 = _console()
    prop = rebalance_command(fleet, cluster, apply=True, console=c2, scheduler=_NoCalls())
    assert not prop.moves and "nothing to move" in c2.export_text() and rec.read_text() == before


def test_a_second_apply_while_one_runs_is_refused_and_changes_nothing(tmp_path):
    """Two `--apply` at once would both stop and resubmit b: the second is refused in one line naming the
    holder, nothing is stopped or submitted, the record is unchanged; once the first is done, it runs."""
    import fcntl
    import os

    fleet, cluster, rec, b = _a_done_b_behind(tmp_path)
    before = rec.read_text()
    lock = rec.with_name(rec.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"pid 4242 on login1")
    try:
        with pytest.raises(
            LaunchError, match=r"another `mltrain fleet rebalance --apply` is moving .*pid 4242 on login1"
        ):
            rebalance_command(fleet, cluster, apply=True, console=_console(), scheduler=_NoCalls(), now=NOW)
    finally:
        os.close(fd)
    assert rec.read_text() == before and not (b / rundir.STOP_FILE).exists()
    fake = _FakeSlurm(b, running_polls=3, stop_step=23, ckpt_step=23)
    rebalance_command(fleet, cluster, apply=True, console=_console(), scheduler=fake, poll_s=0.01, now=NOW)
    assert len(fake.submits) == 1


def test_apply_refuses_to_resubmit_when_the_stop_left_no_checkpoint_at_its_step(tmp_path):
    fleet, cluster, rec, b = _a_done_b_behind(tmp_path)
    before = rec.read_text()
    fake = _FakeSlurm(b, running_polls=2, stop_step=23, ckpt_step=None)  # newest checkpoint stays step 20
    c = _console()
    with pytest.raises(LaunchError, match="not moved: b"):
        rebalance_command(fleet, cluster, apply=True, console=c, scheduler=fake, poll_s=0.01)
    text = " ".join(c.export_text().split())
    assert "b: stopped at step 23 but the newest committed checkpoint is step 20: not resubmitted on 2 nodes" in text
    assert not fake.submits and rec.read_text() == before


def test_apply_withdraws_a_stop_that_does_not_land(tmp_path):
    fleet, cluster, rec, b = _a_done_b_behind(tmp_path)
    before = rec.read_text()
    fake = _FakeSlurm(b, running_polls=10**9)  # the job never leaves the queue
    c = _console()
    with pytest.raises(LaunchError, match="not moved: b"):
        rebalance_command(fleet, cluster, apply=True, console=c, scheduler=fake, stop_timeout_s=0.2, poll_s=0.01)
    text = " ".join(c.export_text().split())
    assert "b: job 12 still RUNNING 0 s after the stop request: stop withdrawn, not moved" in text
    assert not (b / rundir.STOP_FILE).exists() and not (b / CANCELLED_FILE).exists()  # it trains on, requeueable
    assert not fake.submits and rec.read_text() == before


def test_apply_leaves_a_run_that_is_not_running_alone(tmp_path):
    """Between the proposal and the move the job ended: nothing is stopped or submitted."""
    fleet, cluster, rec, b = _a_done_b_behind(tmp_path)

    class Gone(_NoCalls):
        def state(self, job_id):
            return "COMPLETED"

    c = _console()
    with pytest.raises(LaunchError):
        rebalance_command(fleet, cluster, apply=True, console=c, scheduler=Gone())
    assert "b: job 12 is COMPLETED, not RUNNING: not moved" in c.export_text()
    assert not (b / rundir.STOP_FILE).exists() and not (b / CANCELLED_FILE).exists()


def test_apply_does_not_resubmit_a_run_that_finished_before_the_stop(tmp_path):
    fleet, cluster, rec, b = _a_done_b_behind(tmp_path)
    before = rec.read_text()

    class Finished(_FakeSlurm):
        def state(self, job_id):
            if self.left > 0:
                self.left -= 1
                return "RUNNING"
            if self.stop_seen is None:
                self.stop_seen = ""
                _write_jsonl(self.run / "metrics.jsonl", [{"kind": "exit", "step": 120, "reason": "done",
                                                           "time": time.time()}])  # fmt: skip
            return "COMPLETED"

    fake = Finished(b, running_polls=1)
    c = _console()
    with pytest.raises(LaunchError, match="not moved: b"):
        rebalance_command(fleet, cluster, apply=True, console=c, scheduler=fake, poll_s=0.01)
    assert "b: finished (step 120) before the stop: nothing to resubmit" in " ".join(c.export_text().split())
    assert not fake.submits and rec.read_text() == before
    assert not (b / CANCELLED_FILE).exists() and not (b / rundir.STOP_FILE).exists()


def test_apply_waits_through_a_slurm_that_does_not_answer_and_never_takes_it_for_gone(tmp_path):
    """While the stopped job's fate is unknown (slurmctld restarting), the move waits, up to its deadline; it
    does not take "no answer" for "the job left the queue" and submit a second job beside a live one."""
    from mltrain.launch.slurm import SlurmUnreachable

    fleet, cluster, rec, b = _a_done_b_behind(tmp_path)
    before = rec.read_text()

    class Silent(_FakeSlurm):
        def state(self, job_id):
            if self.left > 0:
                self.left -= 1
                return "RUNNING"
            raise SlurmUnreachable(f"Slurm did not answer about job {job_id}: Unable to contact slurm controller")

    fake = Silent(b, running_polls=1)
    c = _console()
    with pytest.raises(LaunchError, match="not moved: b"):
        rebalance_command(fleet, cluster, apply=True, console=c, scheduler=fake, stop_timeout_s=0.2, poll_s=0.01)
    text = " ".join(c.export_text().split())
    assert "b: job 12 still unknown (Slurm not answering) 0 s after the stop request: stop withdrawn" in text
    assert not fake.submits and rec.read_text() == before
    assert not (b / rundir.STOP_FILE).exists() and not (b / CANCELLED_FILE).exists()  # it trains on, requeueable

    fake = Silent(b, running_polls=0)  # no answer before the stop: nothing is stopped
    c = _console()
    with pytest.raises(LaunchError, match="not moved: b"):
        rebalance_command(fleet, cluster, apply=True, console=c, scheduler=fake, poll_s=0.01)
    assert "b: Slurm did not answer about job 12: Unable to contact slurm controller: not moved" in " ".join(
        c.export_text().split()
    )
    assert not (b / rundir.STOP_FILE).exists() and not fake.submits
