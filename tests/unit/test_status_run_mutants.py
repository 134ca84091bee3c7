"""`run_status` pinned field by field on hand-built run dirs: the state word, the explanation, the notes,
the nodes, the step and checkpoint, running/dead and cancelled, the allocation clock and the scheduler
text. Slurm and the lease are replaced in-process (no subprocess), and every call passes `now=`, so
bench/mutate.py sees each mutant of launch/status.py's `run_status` and the results never depend on the
wall clock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import write_jsonl

from mltrain import runstats
from mltrain.fsutil import read_jsonl
from mltrain.launch import status

NOW = 10_000.0


def _run(tmp_path: Path, config: str = "name: r\ntrain:\n  max_steps: 100\n", job: bool = False) -> Path:
    run = tmp_path / "runs" / "r"
    (run / "control").mkdir(parents=True)
    (run / "slurm").mkdir()
    if config:
        (run / "config.yaml").write_text(config)
    if job:
        write_jsonl(run / "slurm" / "jobs.jsonl", [{"event": "submit", "job_id": "7", "time": 0.0}])
    return run


def _trains(t0: float, first: int, last: int, job: str | None = "7", **extra: Any) -> list[dict]:
    recs: list[dict] = [{"kind": "start", "time": t0, "step": first - 1, "job_id": job}]
    recs += [
        {"kind": "train", "time": t0 + 5 + i, "step": s, "loss": 5.0, "tokens_per_s": 100.0, "step_time_s": 1.0} | extra
        for i, s in enumerate(range(first, last + 1))
    ]
    return recs


def _slurm(monkeypatch: pytest.MonkeyPatch, info: dict[str, str] | None) -> None:
    """query_job answers `info` for job 7 only (a wrong job id reads as unknown to Slurm)."""
    monkeypatch.setattr(status, "query_job", lambda job_id: info if job_id == "7" else None)


def _holder(monkeypatch: pytest.MonkeyPatch, has: bool, holder: dict[str, Any] | None) -> None:
    monkeypatch.setattr(status, "_local_holder", lambda run_dir: (has, holder))


def _ckpt(run: Path, step: int, mtime: float) -> None:
    d = run / "checkpoints" / f"step_{step:08d}"
    d.mkdir(parents=True)
    (d / "COMMITTED").write_text("{}")
    os.utime(d / "COMMITTED", (mtime, mtime))


def _info(state: str, reason: str = "None", nodes: str = "") -> dict[str, str]:
    return {"state": state, "reason": reason, "nodes": nodes, "restarts": "", "source": "squeue"}


# ------------------------------------------------------------------ a running Slurm job, every field


def test_running_slurm_job_every_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slurm(monkeypatch, _info("RUNNING", "None", "node1,node2"))
    _holder(monkeypatch, True, {"host": "lease-host"})  # never asked while Slurm knows the job
    run = _run(tmp_path, job=True)
    metrics = _trains(NOW - 500, 1, 30, mfu=0.4) + [{"kind": "straggler", "time": NOW - 400, "rank": 3}]
    metrics[-2]["mfu"] = 0.5
    write_jsonl(run / "metrics.jsonl", metrics)
    write_jsonl(
        run / "slurm" / "allocations.jsonl",
        [
            {"event": "start", "job_id": "7", "time": NOW - 2000, "nodes": ["old1"], "time_limit_s": 3600},
            {"event": "end", "job_id": "7", "time": NOW - 1500},
            {"event": "start", "job_id": "7", "time": NOW - 600, "nodes": ["node1", "node2"], "time_limit_s": 3600},
        ],
    )
    write_jsonl(
        run / "restarts.jsonl",
        [{"time": NOW - 1500, "job_id": "7", "cause": "preempted", "action": "requeue", "node": "gpu3,gpu4"}],
    )
    (run / "control" / "exit_reason").write_text("preempted\n")
    os.utime(run / "control" / "exit_reason", (NOW - 550, NOW - 550))
    _ckpt(run, 20, NOW - 100)
    st = status.run_status(run, now=NOW)
    assert st.run_dir == run and st.name == "r" and st.job_id == "7"
    assert st.running is True and st.cancelled is False
    assert (st.state, st.explanation) == ("running", "running; resumed after preempted on gpu[3-4]")
    assert st.scheduler == "RUNNING node1,node2" and st.scheduler_state == "RUNNING"
    assert st.nodes == "node[1-2]"
    assert st.step == 30 and st.total_steps == 100
    assert st.mfu == pytest.approx((0.4 * 9 + 0.5) / 10) and st.loss == 5.0 and st.tokens_per_s == 100.0
    assert st.ckpt_step == 20 and st.ckpt_age_s == pytest.approx(100.0)
    assert st.alloc_elapsed_s == pytest.approx(600.0) and st.alloc_left_s == pytest.approx(3000.0)
    assert st.eta_s == pytest.approx(70.0)
    assert st.exit_reason is None  # the reason left by the attempt before this one
    assert st.restarts == 1 and st.preemptions == 1 and st.stragglers == 1 and st.last_straggler == metrics[-1]
    assert st.notes == []
    allocs = runstats.read_allocations(run)
    expected = runstats.goodput(metrics, allocs, now=NOW, live_job_id="7", local_live=False)
    assert st.goodput == pytest.approx(expected)
    # the allocation still open counts up to now (the job is live), not only to its last record
    assert expected != pytest.approx(runstats.goodput(metrics, allocs, now=NOW, live_job_id=None, local_live=False))
    assert expected != pytest.approx(runstats.goodput(metrics, None, now=NOW, live_job_id="7", local_live=False))


@pytest.mark.parametrize(
    "nodes, shown",
    [("gpu[1,3],gpu[5,7]", "gpu[1,3],gpu[5,7]"), ("gpu3,node1,node2", "gpu3,node[1-2]"), ("n5", "n5")],
)
def test_running_nodes_come_from_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nodes: str, shown: str) -> None:
    _slurm(monkeypatch, _info("RUNNING", "None", nodes))
    run = _run(tmp_path, job=True)
    write_jsonl(run / "metrics.jsonl", _trains(NOW - 50, 1, 5))
    write_jsonl(run / "slurm" / "allocations.jsonl", [{"event": "start", "job_id": "7", "time": NOW - 60}])
    (run / "control" / "exit_reason").write_text("preempted\n")
    os.utime(run / "control" / "exit_reason", (NOW, NOW))
    st = status.run_status(run, now=NOW)
    assert st.running and st.nodes == shown and st.scheduler == f"RUNNING {nodes}"
    assert st.exit_reason is None and st.explanation == "running"
    assert st.alloc_elapsed_s == pytest.approx(60.0) and st.alloc_left_s is None


def test_allocation_clock_is_never_negative_and_exact_near_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slurm(monkeypatch, _info("RUNNING", "None", "n1"))
    run = _run(tmp_path, job=True)
    write_jsonl(run / "metrics.jsonl", _trains(NOW - 50, 1, 5))
    write_jsonl(
        run / "slurm" / "allocations.jsonl",
        [{"event": "start", "job_id": "7", "time": NOW - 0.5, "nodes": ["n1"], "time_limit_s": 1.0}],
    )
    _ckpt(run, 4, NOW - 0.25)
    st = status.run_status(run, now=NOW)
    assert st.alloc_elapsed_s == pytest.approx(0.5) and st.alloc_left_s == pytest.approx(0.5)
    assert st.ckpt_age_s == pytest.approx(0.25)


def test_running_job_with_another_jobs_open_allocation_has_no_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slurm(monkeypatch, _info("RUNNING", "None", "n1"))
    run = _run(tmp_path, job=True)
    write_jsonl(run / "metrics.jsonl", _trains(NOW - 50, 1, 5))
    write_jsonl(
        run / "slurm" / "allocations.jsonl",
        [{"event": "start", "job_id": "6", "time": NOW - 60, "nodes": ["n9"], "time_limit_s": 600}],
    )
    st = status.run_status(run, now=NOW)
    assert st.running and st.nodes == "n1"
    assert st.alloc_elapsed_s is None and st.alloc_left_s is None


# ------------------------------------------------------------------ the scheduler line and pending jobs


@pytest.mark.parametrize(
    "reason, scheduler, explanation",
    [
        ("Priority", "PENDING Priority", "pending (Priority)"),
        ("None", "PENDING", "pending"),
        ("", "PENDING", "pending"),
    ],
)
def test_pending_job_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reason: str, scheduler: str, explanation: str
) -> None:
    _slurm(monkeypatch, _info("PENDING", reason, ""))
    run = _run(tmp_path, job=True)
    st = status.run_status(run, now=NOW)
    assert (st.state, st.explanation, st.scheduler) == ("pending", explanation, scheduler)
    assert st.running is False and st.cancelled is False and st.step is None and st.nodes is None


def test_job_unknown_to_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm forgot the job: no scheduler state; recent records do not make a Slurm run look alive."""
    _slurm(monkeypatch, None)
    _holder(monkeypatch, False, None)
    run = _run(tmp_path, job=True)
    write_jsonl(run / "metrics.jsonl", _trains(NOW - 30, 1, 10))
    st = status.run_status(run, now=NOW)
    assert st.scheduler == "job 7: unknown to Slurm (aged out?)" and st.scheduler_state is None
    assert st.running is False and st.alloc_elapsed_s is None
    assert (st.state, st.explanation) == ("stopped", "not running, no exit recorded (killed?); starts from step 0")


def test_ended_job_takes_nodes_from_the_last_allocation_not_the_lease(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slurm(monkeypatch, _info("FAILED", "NonZeroExitCode", "n1"))
    _holder(monkeypatch, True, {"host": "lease-host"})
    run = _run(tmp_path, job=True)
    write_jsonl(run / "metrics.jsonl", _trains(0.0, 1, 10))
    write_jsonl(
        run / "slurm" / "allocations.jsonl",
        [
            {"event": "start", "job_id": "5", "time": 1.0, "nodes": ["a1"]},
            {"event": "start", "job_id": "6", "time": 2.0, "nodes": ["b1"]},
            {"event": "start", "job_id": "7", "time": 3.0, "nodes": ["c1", "c2"]},
        ],
    )
    st = status.run_status(run, now=NOW)
    assert st.scheduler == "FAILED NonZeroExitCode" and st.nodes == "c[1-2]" and st.running is False
    assert (st.state, st.explanation) == ("stopped", "job FAILED, no exit recorded")
    assert st.alloc_elapsed_s is None and st.eta_s is None


def test_ended_jobs_open_allocation_stops_at_its_last_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job Slurm no longer runs is not live: an allocation without its end event does not count up to now."""
    _slurm(monkeypatch, _info("FAILED"))
    run = _run(tmp_path, job=True)
    metrics = _trains(NOW - 1000, 1, 10)
    write_jsonl(run / "metrics.jsonl", metrics)
    write_jsonl(run / "slurm" / "allocations.jsonl", [{"event": "start", "job_id": "7", "time": NOW - 1010}])
    st = status.run_status(run, now=NOW)
    allocs = runstats.read_allocations(run)
    expected = runstats.goodput(metrics, allocs, now=NOW, live_job_id=None, local_live=False)
    assert st.running is False and st.goodput == pytest.approx(expected)
    assert expected != pytest.approx(runstats.goodput(metrics, allocs, now=NOW, live_job_id="7", local_live=False))


def test_ended_job_whose_last_allocation_has_no_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slurm(monkeypatch, _info("FAILED", "None", ""))
    _holder(monkeypatch, True, {"host": "lease-host"})
    run = _run(tmp_path, job=True)
    write_jsonl(
        run / "slurm" / "allocations.jsonl",
        [
            {"event": "start", "job_id": "5", "time": 1.0, "nodes": ["a1"]},
            {"event": "start", "job_id": "6", "time": 2.0, "nodes": ["b1"]},
            {"event": "start", "job_id": "7", "time": 3.0},
        ],
    )
    st = status.run_status(run, now=NOW)
    assert st.nodes is None and st.scheduler == "FAILED"
    assert (st.state, st.explanation) == ("-", "no exit recorded")


# ------------------------------------------------------------------ local runs: the lease and the records


def test_local_run_holding_its_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _holder(monkeypatch, True, {"host": "gpu7", "pid": 1})
    run = _run(tmp_path)
    metrics = _trains(NOW - 0.5, 1, 3, job=None, step_time_s=0.01)
    for r in metrics[1:]:
        r["time"] = NOW - 0.4
    write_jsonl(run / "metrics.jsonl", metrics)
    st = status.run_status(run, now=NOW)
    assert st.running is True and st.job_id is None and st.scheduler is None
    assert (st.state, st.explanation) == ("running", "running")
    assert st.nodes == "gpu7" and st.alloc_elapsed_s == pytest.approx(0.5) and st.alloc_left_s is None
    assert st.eta_s == pytest.approx(0.97) and st.step == 3
    expected = runstats.goodput(metrics, [], now=NOW, live_job_id=None, local_live=True)
    assert st.goodput == pytest.approx(expected)
    assert expected != pytest.approx(runstats.goodput(metrics, [], now=NOW, live_job_id=None, local_live=False))


def test_local_run_whose_lease_holder_is_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _holder(monkeypatch, True, None)
    run = _run(tmp_path)
    write_jsonl(run / "metrics.jsonl", _trains(NOW - 20, 1, 3, job=None))
    st = status.run_status(run, now=NOW)
    assert st.running is False and st.nodes is None and st.alloc_elapsed_s is None and st.eta_s is None
    metrics = read_jsonl(run / "metrics.jsonl")
    expected = runstats.goodput(metrics, [], now=NOW, live_job_id=None, local_live=False)
    assert st.goodput == pytest.approx(expected)  # a dead run's time stops at its last record
    assert expected != pytest.approx(runstats.goodput(metrics, [], now=NOW, live_job_id=None, local_live=True))
    assert (st.state, st.explanation) == ("stopped", "not running, no exit recorded (killed?); starts from step 0")


def test_local_running_run_without_a_start_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _holder(monkeypatch, True, {"host": ""})
    run = _run(tmp_path)
    write_jsonl(run / "metrics.jsonl", _trains(NOW - 20, 1, 3, job=None)[1:])
    st = status.run_status(run, now=NOW)
    assert st.running is True and st.alloc_elapsed_s is None and st.nodes is None


@pytest.mark.parametrize(
    "age, running",
    [(10.0, True), (status.LOCAL_STALE_S - 1, True), (status.LOCAL_STALE_S, False), (5000.0, False)],
)
def test_local_run_without_a_lease_is_alive_while_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, age: float, running: bool
) -> None:
    monkeypatch.setattr(status, "query_job", lambda job_id: pytest.fail("no Slurm job to ask about"))
    run = _run(tmp_path)
    metrics = _trains(NOW - age - 10, 1, 3, job=None)
    metrics[-1]["time"] = NOW - age
    write_jsonl(run / "metrics.jsonl", metrics)
    st = status.run_status(run, now=NOW)
    assert st.running is running
    assert st.state == ("running" if running else "stopped")
    assert st.alloc_elapsed_s == (pytest.approx(age + 10) if running else None)


def test_local_run_that_wrote_its_exit_is_not_running(tmp_path: Path) -> None:
    """The last record is an exit (no control/exit_reason file): ended, however recent."""
    run = _run(tmp_path)
    metrics = _trains(NOW - 30, 1, 3, job=None) + [{"kind": "exit", "time": NOW - 1, "step": 3, "reason": "done"}]
    write_jsonl(run / "metrics.jsonl", metrics)
    st = status.run_status(run, now=NOW)
    assert st.running is False and st.step == 3
    assert (st.state, st.explanation) == ("stopped", "not running, no exit recorded (killed?); starts from step 0")


def test_local_run_with_a_current_exit_reason_is_not_running(tmp_path: Path) -> None:
    run = _run(tmp_path)
    write_jsonl(run / "metrics.jsonl", _trains(0.0, 1, 3, job=None))
    (run / "control" / "exit_reason").write_text("failed\n")
    st = status.run_status(run, now=30.0)
    assert st.running is False and st.exit_reason == "failed"
    assert (st.state, st.explanation) == ("failed", "crashed (exception in the trainer)")


def test_local_run_with_only_a_start_record_is_not_started(tmp_path: Path) -> None:
    run = _run(tmp_path)
    write_jsonl(run / "metrics.jsonl", [{"kind": "start", "time": NOW - 1, "step": 0}])
    st = status.run_status(run, now=NOW)
    assert st.running is False and st.step is None and st.alloc_elapsed_s is None
    assert (st.state, st.explanation) == ("-", "not started")


def test_exit_reason_older_than_the_latest_start_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _holder(monkeypatch, True, None)
    run = _run(tmp_path)
    (run / "control" / "exit_reason").write_text("failed\n")
    os.utime(run / "control" / "exit_reason", (100.0, 100.0))
    write_jsonl(run / "metrics.jsonl", _trains(200.0, 1, 3, job=None))
    st = status.run_status(run, now=300.0)
    assert st.exit_reason is None and st.running is False
    assert (st.state, st.explanation) == ("stopped", "not running, no exit recorded (killed?); starts from step 0")


# ------------------------------------------------------------------ steps, loss, MFU, total steps


def test_exit_without_train_records_gives_the_step(tmp_path: Path) -> None:
    run = _run(tmp_path)
    write_jsonl(
        run / "metrics.jsonl",
        [{"kind": "start", "time": 1.0, "step": 10}, {"kind": "exit", "time": 2.0, "step": 12, "reason": "failed"}],
    )
    (run / "control" / "exit_reason").write_text("failed\n")
    st = status.run_status(run, now=NOW)
    assert st.step == 12 and st.loss is None and st.mfu is None and st.running is False
    assert (st.state, st.explanation) == ("failed", "crashed (exception in the trainer)")


def test_train_records_without_loss_or_mfu(tmp_path: Path) -> None:
    run = _run(tmp_path)
    recs = [{"kind": "train", "time": 1.0 + s, "step": s, "step_time_s": 1.0} for s in range(1, 4)]
    write_jsonl(run / "metrics.jsonl", [{"kind": "start", "time": 0.0, "step": 0}, *recs])
    st = status.run_status(run, now=NOW)
    assert st.step == 3 and st.loss is None and st.mfu is None and st.tokens_per_s is None


def test_total_steps_of_a_script_run_come_from_its_start_record(tmp_path: Path) -> None:
    run = _run(tmp_path, config="name: r\nscript:\n  path: train.py\n")
    write_jsonl(run / "metrics.jsonl", [{"kind": "start", "time": 0.0, "step": 0, "max_steps": 50}])
    st = status.run_status(run, now=NOW)
    assert st.total_steps == 50 and st.step is None


@pytest.mark.parametrize("ckpt_dir", [None, "out"])
def test_script_run_checkpoint(tmp_path: Path, ckpt_dir: str | None) -> None:
    extra = f"  checkpoint_dir: {ckpt_dir}\n" if ckpt_dir else ""
    run = _run(tmp_path, config=f"name: r\nscript:\n  path: train.py\n{extra}")
    d = run / (ckpt_dir or "checkpoints") / "checkpoint-40"
    d.mkdir(parents=True)
    (d / "MLTRAIN_COMPLETE").write_text("")
    os.utime(d, (NOW - 7, NOW - 7))
    _ckpt(run, 10, NOW - 9)  # a trainer-style checkpoint a script run does not resume from
    st = status.run_status(run, now=NOW)
    assert st.ckpt_step == 40 and st.ckpt_age_s == pytest.approx(7.0)


# ------------------------------------------------------------------ cancelled


def test_cancelled_by_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slurm(monkeypatch, _info("CANCELLED"))
    run = _run(tmp_path, job=True)
    write_jsonl(run / "metrics.jsonl", _trains(0.0, 1, 5))
    st = status.run_status(run, now=NOW)
    assert st.cancelled is True and st.notes == []
    assert (st.state, st.explanation) == ("cancelled", "cancelled; a new submit starts from step 0")


def test_cancelled_with_mltrain_cancel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slurm(monkeypatch, _info("FAILED"))
    run = _run(tmp_path, job=True)
    write_jsonl(run / "metrics.jsonl", _trains(0.0, 1, 5))
    (run / "control" / "cancelled").write_text("7\n")
    _ckpt(run, 4, NOW - 5)
    st = status.run_status(run, now=NOW)
    assert st.cancelled is True
    assert (st.state, st.explanation) == (
        "cancelled",
        "cancelled with mltrain cancel; a new submit resumes from step 4",
    )


def test_cancel_file_of_a_local_run_is_not_a_cancel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _holder(monkeypatch, True, None)
    run = _run(tmp_path)
    write_jsonl(run / "metrics.jsonl", _trains(0.0, 1, 5, job=None))
    (run / "control" / "cancelled").write_text("7\n")
    st = status.run_status(run, now=NOW)
    assert st.cancelled is False and st.state == "stopped" and st.notes == []


def test_cancelled_decision_in_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _holder(monkeypatch, True, None)
    run = _run(tmp_path)
    write_jsonl(run / "metrics.jsonl", _trains(0.0, 1, 5, job=None))
    write_jsonl(run / "restarts.jsonl", [{"time": 9.0, "cause": "cancelled", "action": "give_up"}])
    st = status.run_status(run, now=NOW)
    assert st.cancelled is True
    assert (st.state, st.explanation) == ("cancelled", "cancelled; a new submit starts from step 0")


# ------------------------------------------------------------------ config errors after a finished run


def _finished_then_refused(run: Path, then_start: bool = False) -> None:
    metrics = _trains(0.0, 1, 5) + [{"kind": "exit", "time": 20.0, "step": 5, "reason": "done"}]
    if then_start:
        metrics.append({"kind": "start", "time": 21.0, "step": 5})
    write_jsonl(run / "metrics.jsonl", metrics)
    (run / "control" / "exit_reason").write_text("config_error\n")


def test_finished_run_then_a_refused_start_with_the_jobs_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _slurm(monkeypatch, _info("COMPLETED"))
    run = _run(tmp_path, job=True)
    _finished_then_refused(run)
    (run / "slurm" / "7.err").write_text("error: data.dir: no manifest\n")
    st = status.run_status(run, now=NOW)
    assert (st.state, st.explanation) == ("done", "finished; a later start was refused: data.dir: no manifest")
    assert st.eta_s is None and st.exit_reason == "config_error"


def test_finished_run_then_a_refused_start_without_an_error_line(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _finished_then_refused(run)
    st = status.run_status(run, now=NOW)
    assert (st.state, st.explanation) == ("done", "finished; a later start was refused")


def test_config_error_after_a_later_start_is_a_config_error(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _finished_then_refused(run, then_start=True)
    os.utime(run / "control" / "exit_reason", (30.0, 30.0))
    st = status.run_status(run, now=NOW)
    assert st.state == "config err"
    assert st.explanation == "stopped: config error, not requeued (see mltrain logs r)"


def test_unknown_exit_reason_is_shown_as_it_is(tmp_path: Path) -> None:
    run = _run(tmp_path)
    write_jsonl(run / "metrics.jsonl", _trains(0.0, 1, 5, job=None))
    (run / "control" / "exit_reason").write_text("weird\n")
    st = status.run_status(run, now=NOW)
    assert (st.state, st.explanation, st.exit_reason) == ("weird", "weird", "weird")


# ------------------------------------------------------------------ Slurm not answering


def _silent_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    from mltrain.launch.slurm import SlurmUnreachable

    def no_answer(job_id: str) -> None:
        raise SlurmUnreachable(f"Slurm did not answer about job {job_id}: Unable to contact slurm controller")

    monkeypatch.setattr(status, "query_job", no_answer)


def test_a_stopped_run_whose_job_slurm_cannot_be_asked_about_is_unknown(tmp_path, monkeypatch) -> None:
    """What the run's files say (preempted: the batch script requeues it) may be old news; the state is
    unknown, the explanation says why and to ask again, and what the files said stays as a note."""
    _silent_slurm(monkeypatch)
    _holder(monkeypatch, False, None)
    run = _run(tmp_path, job=True)
    write_jsonl(run / "metrics.jsonl", _trains(NOW - 500, 1, 30) + [
        {"kind": "exit", "time": NOW - 400, "step": 30, "reason": "preempted", "job_id": "7"}
    ])  # fmt: skip
    (run / "control" / "exit_reason").write_text("preempted\n")
    st = status.run_status(run, now=NOW)
    assert st.state == "unknown" and not st.running and st.scheduler == "job 7: not answering"
    assert st.explanation == (
        "Slurm did not answer about job 7: Unable to contact slurm controller; job 7 may still be queued or "
        "running: ask again"
    )
    assert st.notes[0].startswith("from the run's files: stopped for preemption")


def test_slurm_not_answering_leaves_done_running_and_cancelled_as_they_are(tmp_path, monkeypatch) -> None:
    _silent_slurm(monkeypatch)
    run = _run(tmp_path, job=True)
    write_jsonl(run / "metrics.jsonl", _trains(NOW - 500, 1, 100) + [
        {"kind": "exit", "time": NOW - 10, "step": 100, "reason": "done", "job_id": "7"}
    ])  # fmt: skip
    (run / "control" / "exit_reason").write_text("done\n")
    _holder(monkeypatch, False, None)
    st = status.run_status(run, now=NOW)
    assert st.state == "done" and not any(n.startswith("from the run's files") for n in st.notes)
    (run / "control" / "exit_reason").unlink()
    write_jsonl(run / "metrics.jsonl", _trains(NOW - 500, 1, 30))
    _holder(monkeypatch, True, {"host": "h1", "pid": 1})  # a live trainer's lease vouches for it
    assert status.run_status(run, now=NOW).state == "running"
    _holder(monkeypatch, False, None)
    (run / "control" / "cancelled").write_text("7\n")  # `mltrain cancel` was run
    assert status.run_status(run, now=NOW).state == "cancelled"
