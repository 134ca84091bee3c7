"""batch_helper.py, the decisions and records of the Slurm batch script, tested as Python: every cause, every
record field, the edge cases. The rendered script runs it against fake Slurm commands in test_slurm_render.py,
test_slurm_health_render.py and test_slurm_script_render.py, and on a real Slurm in tests/integration."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mltrain import checkpoint_rule, rundir, runstats
from mltrain.launch import batch_helper as bh
from mltrain.launch.slurm import BATCH_HELPER_MODULES, CANCELLED_FILE, install_batch_helper

RECORD_KEYS = [
    "time",
    "job_id",
    "attempt",
    "cause",
    "node",
    "action",
    "counted",
    "step",
    "slurm_restart_count",
    "failures",
    "resume_step",
]


def _job(tmp_path: Path, **kw) -> bh.Job:
    run = tmp_path / "run"
    (run / "slurm").mkdir(parents=True, exist_ok=True)
    defaults = {"job_id": "7", "num_nodes": 2, "partition": "gpu", "max_restarts": 3, "max_in_place": 1}
    return bh.Job(run_dir=run, **{**defaults, **kw})


def _commit(run: Path, step: int) -> None:
    d = run / "checkpoints" / checkpoint_rule.step_dir_name(step)
    d.mkdir(parents=True)
    (d / "COMMITTED").write_text("{}")


def _restarts(job: bh.Job) -> list[dict]:
    return bh.read_jsonl(job.run_dir / "restarts.jsonl")


def _out(job: bh.Job) -> str:
    return job.out_log.read_text() if job.out_log.exists() else ""


def _err_log(job: bh.Job, *sections: tuple[int, str]) -> None:
    """The job's .err: for each (attempt, Slurm's line) the script's marker, then the line."""
    job.err_log.write_text(
        "".join(f"[mltrain] attempt {a} of job {job.job_id} starts\n{line}\n" for a, line in sections)
    )


# ------------------------------------------------------------------ what it is: a file the host's python3 runs


def test_the_helper_and_its_checkpoint_rule_are_python37_stdlib_files(tmp_path: Path) -> None:
    for name in BATCH_HELPER_MODULES:
        src = Path(__import__(name, fromlist=["_"]).__file__).read_text()
        tree = ast.parse(src, feature_version=(3, 7))
        imported = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.Import):
                imported |= {a.name.split(".")[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom):
                imported.add((n.module or "").split(".")[0])
        assert imported <= {*sys.stdlib_module_names, "__future__", "mltrain", "checkpoint_rule"}, (name, imported)
    # copied into a run's slurm/ and run without site-packages (no mltrain anywhere): it works from there
    run = tmp_path / "run"
    install_batch_helper(run)
    assert sorted(p.name for p in (run / "slurm").iterdir()) == ["batch_helper.py", "checkpoint_rule.py"]
    _commit(run, 12)
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7"}
    p = subprocess.run(
        [sys.executable, "-S", "-B", str(run / "slurm" / "batch_helper.py"), "--run-dir", str(run), "latest-step"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (p.returncode, p.stdout, p.stderr) == (0, "12\n", "")
    assert not (run / "slurm" / "__pycache__").exists()


def test_file_names_agree_with_the_readers() -> None:
    assert bh.RESTARTS_FILE == rundir.RESTARTS_FILE and bh.HANGS_DIR == rundir.HANGS_DIR
    assert bh.ALLOCATIONS_FILE == runstats.ALLOCATIONS_FILE and bh.CANCELLED_FILE == CANCELLED_FILE
    assert checkpoint_rule.MARKER == rundir.CHECKPOINT_MARKER
    assert checkpoint_rule.CHECKPOINTS_DIR == rundir.CHECKPOINTS_DIR


# ------------------------------------------------------------------ the checkpoint rule


def test_latest_step_of_mltrain_checkpoints_needs_the_marker(tmp_path: Path) -> None:
    job = _job(tmp_path)
    assert bh.latest_step(job) is None
    _commit(job.run_dir, 20)
    (job.run_dir / "checkpoints" / "step_00000030").mkdir()  # no marker: cut short
    (job.run_dir / "checkpoints" / "step_00000040.tmp").mkdir()
    (job.run_dir / "checkpoints" / "step_50").mkdir()
    (job.run_dir / "checkpoints" / "step_50" / "COMMITTED").write_text("{}")  # not a trainer's name
    (job.run_dir / "checkpoints" / "step_00000060").write_text("a file")
    assert bh.latest_step(job) == 20 == rundir.committed_checkpoints(job.run_dir)[-1][0]


def test_latest_step_of_a_script_run_uses_the_script_rule(tmp_path: Path) -> None:
    ckpts = tmp_path / "ckpts"
    job = _job(tmp_path, checkpoint_dir=ckpts)
    _commit(job.run_dir, 99)  # the trainer's dir is not the script's
    assert bh.latest_step(job) is None
    (ckpts / "checkpoint-10").mkdir(parents=True)
    (ckpts / "checkpoint-10" / checkpoint_rule.SCRIPT_MARKER).write_text("")
    (ckpts / "checkpoint-20").mkdir()  # weights only: killed mid-save
    (ckpts / "checkpoint-20" / "model.safetensors").write_text("x")
    assert bh.latest_step(job) == 10


# ------------------------------------------------------------------ restarts.jsonl


def test_record_fields(tmp_path: Path) -> None:
    job = _job(tmp_path)
    _commit(job.run_dir, 20)
    t0 = time.time()
    rec = bh.record(job, "rank_failure", "nodeB", "requeue", True)
    assert list(rec) == RECORD_KEYS and _restarts(job) == [rec]
    assert t0 <= rec["time"] <= time.time()
    assert rec["job_id"] == "7" and rec["attempt"] == 0 and rec["cause"] == "rank_failure" and rec["node"] == "nodeB"
    assert rec["action"] == "requeue" and rec["counted"] is True and rec["step"] == rec["resume_step"] == 20
    assert rec["slurm_restart_count"] is None and rec["failures"] == 1
    # the line is the JSON of the record, one per line
    assert json.loads((job.run_dir / "restarts.jsonl").read_text().splitlines()[0]) == rec


def test_record_counts_only_this_jobs_counted_restarts(tmp_path: Path) -> None:
    job = _job(tmp_path, attempt=2, restart_count_set=True)
    path = job.run_dir / "restarts.jsonl"
    path.write_text(
        json.dumps({"job_id": "7", "counted": True, "action": "restart_in_place"})
        + "\n"
        + json.dumps({"job_id": "7", "counted": False, "action": "requeue"})
        + "\n"
        + json.dumps({"job_id": "6", "counted": True, "action": "requeue"})
        + "\n"
        + json.dumps({"job_id": "7", "counted": "true"})  # not the boolean
        + "\n[1, 2]\n"
        + '{"job_id": "7", "coun'  # torn by a kill
        + "\n"
    )
    assert bh.failures_so_far(job) == 1
    rec = bh.record(job, "preempted", "", "requeue", False)
    assert (rec["node"], rec["failures"], rec["slurm_restart_count"], rec["step"]) == (None, 1, 2, None)
    rec = bh.record(job, "hang", None, "give_up", True)
    assert rec["failures"] == 2
    # another attempt's line (the previous attempt recorded late): Slurm's count of that attempt
    assert bh.record(job, "unknown", None, "requeue", False, attempt=1)["slurm_restart_count"] == 1
    assert bh.record(job, "unknown", None, "requeue", False, attempt=0)["slurm_restart_count"] is None


def test_slurm_restart_count_is_null_while_slurm_leaves_it_unset(tmp_path: Path) -> None:
    assert bh.record(_job(tmp_path, attempt=0), "x", None, "none", False)["slurm_restart_count"] is None
    assert (
        bh.record(_job(tmp_path, attempt=0, restart_count_set=True), "x", None, "none", False)["slurm_restart_count"]
        is None
    )


# ------------------------------------------------------------------ slurm/allocations.jsonl


def test_allocation_start_and_end(tmp_path: Path) -> None:
    job = _job(tmp_path, attempt=1)
    bh.alloc_start(job, ["nodeA", "nodeB"], 86400)
    bh.alloc_end(job)
    start, end = bh.read_jsonl(job.run_dir / "slurm" / "allocations.jsonl")
    assert list(start) == ["event", "job_id", "time", "attempt", "nodes", "time_limit_s"]
    assert (start["event"], start["job_id"], start["attempt"], start["nodes"], start["time_limit_s"]) == (
        "start",
        "7",
        1,
        ["nodeA", "nodeB"],
        86400,
    )
    assert list(end) == ["event", "job_id", "time", "attempt"] and (end["event"], end["attempt"]) == ("end", 1)
    assert start["time"] <= end["time"]


@pytest.mark.parametrize(
    "last, attempt, closed",
    [
        ({"event": "start", "job_id": "7", "time": 100.0, "attempt": 0}, 1, True),
        ({"event": "start", "job_id": "7", "time": 100.0, "attempt": 0}, 0, False),  # the first attempt
        ({"event": "end", "job_id": "7", "time": 150.0, "attempt": 0}, 1, False),  # closed already
        ({"event": "start", "job_id": "6", "time": 100.0, "attempt": 0}, 1, False),  # another job's
        (None, 1, False),  # no allocation yet
    ],
)
def test_an_unclosed_allocation_is_closed_at_the_last_write_to_the_err_log(
    tmp_path: Path, last: dict | None, attempt: int, closed: bool
) -> None:
    job = _job(tmp_path, attempt=attempt)
    path = job.run_dir / "slurm" / "allocations.jsonl"
    if last is not None:
        path.write_text(json.dumps(last) + "\n")
    job.err_log.write_text("slurmstepd: error: *** JOB 7 ON nodeA CANCELLED AT t DUE TO NODE FAILURE ***\n")
    os.utime(job.err_log, (200.5, 200.5))
    assert bh.alloc_recover(job) is closed
    recs = bh.read_jsonl(path)
    if closed:
        assert recs[-1] == {"event": "end", "job_id": "7", "time": 200, "attempt": 0, "recovered": True}
    else:
        assert len(recs) == (last is not None)


def test_an_unclosed_allocation_without_an_err_log_closes_now(tmp_path: Path) -> None:
    job = _job(tmp_path, attempt=3)
    path = job.run_dir / "slurm" / "allocations.jsonl"
    path.write_text(json.dumps({"event": "start", "job_id": "7", "time": 1.0, "attempt": 2}) + "\n\n")
    t0 = int(time.time())
    assert bh.alloc_recover(job)
    end = bh.read_jsonl(path)[-1]
    assert end["attempt"] == 2 and t0 <= end["time"] <= time.time() and isinstance(end["time"], int)


# ------------------------------------------------------------------ Slurm's words and SIGTERM


@pytest.mark.parametrize(
    "line, cause",
    [
        ("slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-01-01T00:00:00 DUE TO JOB REQUEUE ***", "admin_requeue"),
        ("slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-01-01T00:00:00 DUE TO NODE FAILURE ***", "node_failure"),
        ("slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-01-01T00:00:00 DUE TO PREEMPTION ***", "preempted"),
        ("slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***", "time_limit"),
        ("slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-01-01T00:00:00 ***", "cancelled"),
        ("some error of the trainer", ""),
    ],
)
def test_kill_cause_reads_slurms_words(tmp_path: Path, line: str, cause: str) -> None:
    job = _job(tmp_path)
    _err_log(job, (0, line))
    assert bh.kill_cause(job) == cause


def test_kill_cause_reads_only_that_attempts_part_of_the_err_log(tmp_path: Path) -> None:
    job = _job(tmp_path, attempt=2)
    _err_log(
        job,
        (0, "*** JOB 7 ON n1 CANCELLED AT t DUE TO PREEMPTION ***"),
        (1, "*** JOB 7 ON n1 CANCELLED AT t DUE TO NODE FAILURE ***"),
        (2, "Traceback: the trainer's own error"),
    )
    assert [bh.kill_cause(job, a) for a in (0, 1, 2)] == ["preempted", "node_failure", ""]
    assert bh.kill_cause(job) == "" and bh.kill_cause(job, 5) == ""
    # another job's marker (a resubmit appending to the same run) ends the section too
    with open(job.err_log, "a") as f:
        f.write("[mltrain] attempt 0 of job 8 starts\n*** JOB 8 ON n1 CANCELLED AT t DUE TO TIME LIMIT ***\n")
    assert bh.kill_cause(job, 2) == ""
    job.err_log.unlink()
    assert bh.kill_cause(job) == ""


def test_wait_kill_cause_waits_for_slurms_line(tmp_path: Path) -> None:
    job = _job(tmp_path)
    _err_log(job, (0, "nothing yet"))
    t0 = time.monotonic()
    assert bh.wait_kill_cause(job, 0.1, poll_s=0.02) == "" and time.monotonic() - t0 >= 0.09
    _err_log(job, (0, "*** JOB 7 ON n1 CANCELLED AT t DUE TO JOB REQUEUE ***"))
    assert bh.wait_kill_cause(job, 5, poll_s=0.02) == "admin_requeue"


@pytest.mark.parametrize(
    "slurm, state, restarts, ckpt, failures, cancelled, want",
    [
        ("admin_requeue", "", "", False, 0, False, ("admin_requeue", "requeue", False, "release")),
        ("preempted", "", "", False, 0, False, ("preempted", "requeue", False, "release")),
        ("node_failure", "", "", False, 0, False, ("node_failure", "requeue", True, "release")),
        ("time_limit", "", "", True, 0, False, ("time_limit", "requeue", True, "requeue")),
        ("time_limit", "", "", False, 0, False, ("time_limit", "give_up", True, "-")),  # nothing to resume from
        ("time_limit", "", "", True, 3, False, ("time_limit", "give_up", True, "-")),  # max_restarts used up
        ("cancelled", "", "", True, 0, False, ("cancelled", "none", False, "-")),
        ("", "CANCELLED", "0", True, 0, False, ("cancelled", "none", False, "-")),
        ("", "TIMEOUT", "0", True, 0, False, ("time_limit", "requeue", True, "requeue")),
        ("", "RUNNING", "0", True, 0, False, ("terminated", "none", False, "-")),
        ("", "RUNNING", "2", True, 0, False, ("admin_requeue", "requeue", False, "release")),  # Restarts moved on
        ("", "RUNNING", "1", True, 0, False, ("terminated", "none", False, "-")),  # this attempt's own count
        ("", "", "(null)", True, 0, False, ("terminated", "none", False, "-")),
        ("admin_requeue", "", "", True, 0, True, ("cancelled", "none", False, "-")),  # `mltrain cancel` wins
    ],
)
def test_term_plan(
    tmp_path: Path,
    slurm: str,
    state: str,
    restarts: str,
    ckpt: bool,
    failures: int,
    cancelled: bool,
    want: tuple,
) -> None:
    job = _job(tmp_path, attempt=1)
    if ckpt:
        _commit(job.run_dir, 10)
    for _ in range(failures):
        bh.record(job, "hang", None, "requeue", True)
    if cancelled:
        (job.run_dir / "control").mkdir()
        (job.run_dir / "control" / "cancelled").write_text("7\n")
    assert bh.term_plan(job, slurm, state, restarts) == want


def test_the_previous_attempt_is_recorded_once_with_slurms_cause(tmp_path: Path) -> None:
    job = _job(tmp_path, attempt=2, restart_count_set=True)
    _commit(job.run_dir, 30)
    _err_log(job, (0, "ok"), (1, "*** JOB 7 ON n1 CANCELLED AT t DUE TO NODE FAILURE ***"))
    rec = bh.record_previous_attempt(job)
    assert rec is not None and _restarts(job) == [rec]
    assert (rec["cause"], rec["attempt"], rec["action"], rec["counted"], rec["node"]) == (
        "node_failure",
        1,
        "requeue",
        True,  # counted as the killed script would have counted it
        None,
    )
    assert (rec["slurm_restart_count"], rec["step"], rec["failures"]) == (1, 30, 1)
    assert "the previous attempt was requeued by Slurm (node_failure); recorded" in _out(job)
    assert bh.record_previous_attempt(job) is None and len(_restarts(job)) == 1  # recorded: not again


@pytest.mark.parametrize(
    "line, cause, counted",
    [
        ("DUE TO TIME LIMIT", "time_limit", True),
        ("DUE TO PREEMPTION", "preempted", False),
        ("DUE TO JOB REQUEUE", "admin_requeue", False),
    ],
)
def test_the_previous_attempt_is_counted_as_its_own_script_would_have(
    tmp_path: Path, line: str, cause: str, counted: bool
) -> None:
    """A script SIGKILLed at KillWait before its record was written: the next attempt's record of it counts
    (or not) by term_plan's rule for that cause, so a lost record never makes a time limit free."""
    job = _job(tmp_path, attempt=1, restart_count_set=True)
    _err_log(job, (0, f"*** JOB 7 ON n1 CANCELLED AT t {line} ***"))
    rec = bh.record_previous_attempt(job)
    assert rec is not None and (rec["cause"], rec["action"], rec["counted"]) == (cause, "requeue", counted)
    assert counted == bh.term_plan(_job(tmp_path / "plan", attempt=0), cause)[2]


def test_the_previous_attempt_without_slurms_words_is_unknown(tmp_path: Path) -> None:
    job = _job(tmp_path, attempt=1, restart_count_set=True)
    rec = bh.record_previous_attempt(job)
    assert rec is not None and (rec["cause"], rec["attempt"], rec["slurm_restart_count"]) == ("unknown", 0, None)
    assert "(cause unknown); recorded" in _out(job)
    assert bh.record_previous_attempt(_job(tmp_path, attempt=0)) is None


def test_the_previous_attempt_recorded_by_its_own_script_is_not_recorded_again(tmp_path: Path) -> None:
    job = _job(tmp_path, attempt=1, restart_count_set=True)
    bh.record(job, "preempted", None, "requeue", False, attempt=0)
    bh.record(job, "rank_failure", None, "restart_in_place", True, attempt=0)
    assert bh.record_previous_attempt(job) is None
    job0 = _job(tmp_path, attempt=1, restart_count_set=True, job_id="8")  # another job's line does not count
    assert bh.record_previous_attempt(job0) is not None


# ------------------------------------------------------------------ which node to blame


def _torchrun_logs(tmp_path: Path, **reports: str) -> str:
    prefix = tmp_path / "run" / "slurm" / "torchrun-7-0-0"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for node, text in reports.items():
        Path(f"{prefix}.{node}.log").write_text(text)
    return str(prefix)


@pytest.mark.parametrize(
    "reports, node",
    [
        ({"nodeA": "  exitcode  : 1 (pid: 3)", "nodeB": "  exitcode  : -9 (pid: 1)"}, "nodeB"),
        ({"nodeA": "  exitcode  : -6", "nodeB": "  exitcode  : -9"}, None),  # two nodes saw a kill
        ({"nodeA": "  exitcode  : 1", "nodeB": "all fine"}, "nodeA"),  # the only failure report
        ({"nodeA": "  exitcode  : 1", "nodeB": "  exitcode  : 1"}, None),
        ({"nodeA": "  exitcode  : -15", "nodeB": "all fine"}, "nodeA"),  # SIGTERM is not a kill, still a failure
        ({"nodeA": "  exitcode  : -15", "nodeB": "  exitcode  : -2"}, None),
        ({"nodeA": "  exitcode  : -11", "nodeB": "  exitcode  : 1"}, "nodeA"),
        ({}, None),
    ],
)
def test_blamed_node(tmp_path: Path, reports: dict[str, str], node: str | None) -> None:
    prefix = _torchrun_logs(tmp_path, **reports)
    Path(f"{prefix[:-1]}1.nodeC.log").write_text("  exitcode  : -9")  # the next torchrun run's log
    assert bh.blamed_node(prefix, settle_s=0) == node


STUCK = """mltrain watchdog: rank 1 finished no step for 6s; stacks of all threads:

Current thread 0x00007f0000000002 (most recent call first):
  File "/x/mltrain/train/faults.py", line 163 in _fire

Thread 0x00007f0000000001 (most recent call first):
  File "/x/mltrain/train/faults.py", line 233 in maybe_fire
  File "/x/mltrain/__main__.py", line 3 in <module>
"""
WAITING = STUCK.replace('/x/mltrain/train/faults.py", line 233', '/v/torch/distributed/c10d.py", line 1')


@pytest.mark.parametrize(
    "dumps, node",
    [
        ({"rank0-2000.txt": WAITING, "rank1-2000.txt": STUCK}, "nodeB"),
        ({"rank1-2000.txt": STUCK}, "nodeB"),
        ({"rank0-2000.txt": WAITING}, "nodeA"),  # the only dump
        ({"rank0-2000.txt": STUCK, "rank1-2000.txt": STUCK}, None),  # two candidates: no guess
        ({"rank0-2000.txt": WAITING, "rank1-2000.txt": WAITING}, None),
        ({"rank1-1000.txt": STUCK, "rank0-2000.txt": WAITING}, "nodeA"),  # an older run's dump is not this run's
        ({"rankx-2000.txt": STUCK, "rank1-20a0.txt": STUCK, "rank0-2000.txt": WAITING}, "nodeA"),  # not a dump
        ({}, None),
    ],
)
def test_hung_node(tmp_path: Path, dumps: dict[str, str], node: str | None) -> None:
    job = _job(tmp_path)
    (job.run_dir / "hangs").mkdir()
    for name, text in dumps.items():
        (job.run_dir / "hangs" / name).write_text(text)
    prefix = _torchrun_logs(
        tmp_path,
        nodeA="  host      : nodeA\n  rank      : 0 (local_rank: 0)\n  exitcode  : 3\n",
        nodeB="  host      : nodeB\n  rank      : 1 (local_rank: 0)\n  exitcode  : 3\n",
    )
    assert bh.hung_node(job, 1500, prefix, settle_s=0) == node


def test_main_thread_is_the_thread_with_the_module_frame() -> None:
    assert "maybe_fire" in bh._main_thread(STUCK) and "in _fire" not in bh._main_thread(STUCK)
    assert bh._main_thread("no threads here") == ""


def test_trainer_stop_why_reads_this_runs_words(tmp_path: Path) -> None:
    job = _job(tmp_path, attempt=1)
    job.out_log.write_text(
        "[mltrain t job 7 attempt 1] torchrun: 2 nodes x 1 processes, rendezvous at a:1 (run 0)\n"
        "[mltrain] stop requested (SIGUSR1) at step 10: checkpointing, then exiting\n"
        "[mltrain t job 7 attempt 1] torchrun: 2 nodes x 1 processes, rendezvous at a:1 (run 1)\n"
        "rank 0: [mltrain] stop requested (a signal to another rank) at step 20: checkpointing, then exiting\n"
    )
    assert bh.trainer_stop_why(job, 1) == "a signal to another rank"
    with open(job.out_log, "a") as f:
        f.write("[mltrain t job 7 attempt 1] torchrun: 2 nodes x 1 processes, rendezvous at a:1 (run 2)\n")
    assert bh.trainer_stop_why(job, 2) == ""
    assert bh.trainer_stop_why(_job(tmp_path / "other"), 0) == ""  # no .out yet


# ------------------------------------------------------------------ the decision after torchrun


def _ended(reason: str = "", rc: int = 1, **kw) -> bh.Ended:
    fields = {"stop_requested": False, "in_place": 0, "run_no": 0, "run_t0": 0, "torchrun_log": "/nonexistent/t"}
    return bh.Ended(reason, rc, **{**fields, **kw})


def _decide(job: bh.Job, ended: bh.Ended, healthy: bool | None = None, **kw) -> str:
    return bh.decide(job, ended, healthy, settle_s=0, **kw)


@pytest.mark.parametrize(
    "reason, rc, verdict, rec",
    [
        ("done", 0, "exit 0", None),
        ("done", 1, "exit 0", None),  # the trainer's word wins over srun's status
        ("", 0, "exit 0", None),  # a script run that wrote nothing and exited 0
        ("config_error", 1, "exit 2", ("config_error", "none", False)),
    ],
)
def test_finished_and_config_error(tmp_path: Path, reason: str, rc: int, verdict: str, rec: tuple | None) -> None:
    job = _job(tmp_path)
    assert _decide(job, _ended(reason, rc)) == verdict
    recs = _restarts(job)
    assert [(r["cause"], r["action"], r["counted"]) for r in recs] == ([rec] if rec else [])
    out = _out(job)
    assert ("training finished" in out) == (rec is None)
    assert ("config/precheck error: not requeued (the error is in " + str(job.err_log) + ")" in out) == (
        rec is not None
    )


@pytest.mark.parametrize("reason", ["done", "preempted", "failed", ""])
def test_cancelled_with_mltrain_cancel_is_never_requeued(tmp_path: Path, reason: str) -> None:
    job = _job(tmp_path)
    (job.run_dir / "control").mkdir()
    (job.run_dir / "control" / "cancelled").write_text("7\n")
    assert _decide(job, _ended(reason)) == "exit 0"
    (rec,) = _restarts(job)
    assert (rec["cause"], rec["action"], rec["counted"]) == ("cancelled", "none", False)
    assert "cancelled with mltrain cancel: not requeueing" in _out(job)


@pytest.mark.parametrize("reason, cause", [("", "rank_failure"), ("hang", "hang"), ("preempted", "preempted")])
def test_hyperpod_gives_up_after_its_own_auto_resume(tmp_path: Path, reason: str, cause: str) -> None:
    job = _job(tmp_path)
    assert _decide(job, _ended(reason), hyperpod=True) == "exit 1"
    (rec,) = _restarts(job)
    assert (rec["cause"], rec["action"], rec["counted"]) == (cause, "give_up", True)
    assert "HyperPod auto-resume did not recover the step: giving up" in _out(job)
    assert _decide(_job(tmp_path / "b"), _ended("done"), hyperpod=True) == "exit 0"


def test_preemptions_count_only_without_a_new_checkpoint(tmp_path: Path) -> None:
    job = _job(tmp_path, max_preemptions=2)
    _commit(job.run_dir, 20)
    streak = job.run_dir / "control" / "preempt_streak"
    assert _decide(job, _ended("preempted", stop_requested=True)) == "requeue"
    assert json.loads(streak.read_text()) == {"streak": 0} and streak.read_text().endswith("}\n")
    assert [(r["cause"], r["action"], r["counted"], r["step"]) for r in _restarts(job)] == [
        ("preempted", "requeue", False, 20)
    ]
    # again without a new checkpoint: counted
    assert _decide(job, _ended("preempted", stop_requested=True)) == "requeue"
    assert _restarts(job)[-1]["counted"] is True and json.loads(streak.read_text()) == {"streak": 1}
    assert "preempted without a new checkpoint since the last requeue (1 in a row): counted as a failure" in _out(job)
    # a new checkpoint: the streak starts over
    _commit(job.run_dir, 30)
    assert _decide(job, _ended("preempted", stop_requested=True)) == "requeue"
    assert _restarts(job)[-1]["counted"] is False and json.loads(streak.read_text()) == {"streak": 0}
    # max_preemptions in a row without one: give up
    assert _decide(job, _ended("preempted", stop_requested=True)) == "requeue"
    assert _decide(job, _ended("preempted", stop_requested=True)) == "exit 1"
    assert (_restarts(job)[-1]["action"], _restarts(job)[-1]["counted"]) == ("give_up", True)
    assert "preempted 2 times in a row without a new checkpoint: giving up (launch.max_preemptions=2)" in _out(job)


def test_a_preemption_after_a_time_limit_without_progress_counts(tmp_path: Path) -> None:
    job = _job(tmp_path)
    bh.record(job, "time_limit", None, "requeue", True)  # step null: no checkpoint either time
    streak = job.run_dir / "control" / "preempt_streak"
    streak.parent.mkdir(parents=True, exist_ok=True)
    streak.write_text("not json")
    assert _decide(job, _ended("preempted", stop_requested=True)) == "requeue"
    assert _restarts(job)[-1]["counted"] is True and json.loads(streak.read_text()) == {"streak": 1}


def test_a_preemption_gives_up_when_max_restarts_is_used_up(tmp_path: Path) -> None:
    job = _job(tmp_path, max_restarts=1, max_preemptions=5)
    bh.record(job, "preempted", None, "requeue", True)
    assert _decide(job, _ended("preempted", stop_requested=True)) == "exit 1"
    assert _restarts(job)[-1]["action"] == "give_up"


@pytest.mark.parametrize(
    "why, cause",
    [
        ("SIGTERM", "rank_failure"),
        ("SIGINT", "rank_failure"),
        ("SIGHUP", "rank_failure"),
        ("a signal to another rank", "rank_failure"),
        ("SIGUSR1", "preempted"),
        ("mltrain stop", "preempted"),
        ("", "preempted"),
    ],
)
def test_a_stop_is_a_preemption_only_when_asked_for(tmp_path: Path, why: str, cause: str) -> None:
    job = _job(tmp_path, max_in_place=0)
    line = f"[mltrain] stop requested ({why}) at step 3: checkpointing\n" if why else ""
    job.out_log.write_text(f"[mltrain t job 7 attempt 0] torchrun: x (run 0)\n{line}")
    verdict = _decide(job, _ended("preempted"))
    (rec,) = _restarts(job)
    assert (rec["cause"], rec["counted"], verdict) == (cause, cause == "rank_failure", "requeue")
    assert ("which neither Slurm nor a user sent: a rank failure, not a preemption" in _out(job)) == (
        cause == "rank_failure"
    )
    # USR1 to the batch script: a preemption whatever the trainer saw
    job2 = _job(tmp_path / "b", max_in_place=0)
    job2.out_log.write_text(job.out_log.read_text())
    _decide(job2, _ended("preempted", stop_requested=True))
    assert _restarts(job2)[-1]["cause"] == "preempted"


def test_a_rank_failure_asks_for_the_probe_then_restarts_in_place(tmp_path: Path) -> None:
    job = _job(tmp_path, max_in_place=1)
    prefix = _torchrun_logs(tmp_path, nodeA="  exitcode  : 1", nodeB="  exitcode  : -9")
    ended = _ended("", 137, torchrun_log=prefix)
    assert _decide(job, ended) == "probe"
    assert _restarts(job) == [] and _out(job) == ""  # nothing recorded or said before the answer
    assert _decide(job, ended, True) == "restart_in_place"
    (rec,) = _restarts(job)
    assert (rec["cause"], rec["node"], rec["action"], rec["counted"], rec["failures"]) == (
        "rank_failure",
        "nodeB",
        "restart_in_place",
        True,
        1,
    )
    assert "rank_failure on nodeB: restarting torchrun in place (1 of 1), restart 1 of 3" in _out(job)
    # the in-place restarts are used up: requeue without the node, no probe
    assert _decide(job, _ended("failed", torchrun_log=prefix, in_place=1)) == "requeue nodeB"
    assert (_restarts(job)[-1]["action"], _restarts(job)[-1]["failures"]) == ("requeue", 2)
    assert "rank_failure on nodeB: restart 2 of 3" in _out(job)


def test_a_rank_failure_on_an_unhealthy_allocation_is_requeued(tmp_path: Path) -> None:
    job = _job(tmp_path)
    assert _decide(job, _ended("failed"), False) == "requeue"  # no node to blame: nothing to exclude
    (rec,) = _restarts(job)
    assert (rec["cause"], rec["node"], rec["action"]) == ("rank_failure", None, "requeue")
    assert "rank_failure on unknown node: restart 1 of 3" in _out(job)


def test_the_stop_nobody_asked_for_is_said_once_across_the_probe(tmp_path: Path) -> None:
    job = _job(tmp_path)
    job.out_log.write_text(
        "[mltrain t job 7 attempt 0] torchrun: x (run 0)\n[mltrain] stop requested (SIGTERM) at step 3\n"
    )
    assert _decide(job, _ended("preempted")) == "probe"
    assert _decide(job, _ended("preempted"), True) == "restart_in_place"
    assert _out(job).count("which neither Slurm nor a user sent") == 1


def test_a_hang_records_its_node_but_does_not_exclude_it(tmp_path: Path) -> None:
    job = _job(tmp_path, max_in_place=5)
    (job.run_dir / "hangs").mkdir()
    (job.run_dir / "hangs" / "rank1-2000.txt").write_text(STUCK)
    prefix = _torchrun_logs(tmp_path, nodeB="  rank      : 1 (local_rank: 0)\n  exitcode  : 3\n")
    assert _decide(job, _ended("hang", torchrun_log=prefix, run_t0=1000)) == "requeue"  # no probe for a hang
    (rec,) = _restarts(job)
    assert (rec["cause"], rec["node"], rec["action"], rec["counted"]) == ("hang", "nodeB", "requeue", True)


@pytest.mark.parametrize("reason, cause", [("failed", "rank_failure"), ("hang", "hang"), ("", "rank_failure")])
def test_give_up_when_max_restarts_is_used_up(tmp_path: Path, reason: str, cause: str) -> None:
    job = _job(tmp_path, max_restarts=2)
    bh.record(job, "hang", None, "requeue", True)
    bh.record(job, "preempted", None, "requeue", False)  # not counted
    bh.record(job, "rank_failure", None, "restart_in_place", True)
    assert _decide(job, _ended(reason)) == "exit 1"
    rec = _restarts(job)[-1]
    assert (rec["cause"], rec["action"], rec["counted"], rec["failures"]) == (cause, "give_up", True, 3)
    assert f"{cause} on unknown node: giving up after 2 restarts (launch.max_restarts=2)" in _out(job)


# ------------------------------------------------------------------ the health check and the exclusion plan


def test_health_failure_asks_for_the_plan_then_requeues(tmp_path: Path) -> None:
    job = _job(tmp_path)
    assert bh.health_failed(job, "nodeB", None) == "plan" and _restarts(job) == []
    assert bh.health_failed(job, "nodeB", "nodeB ") == "requeue"
    (rec,) = _restarts(job)
    assert (rec["cause"], rec["node"], rec["action"], rec["counted"], rec["failures"]) == (
        "health_check",
        "nodeB",
        "requeue",
        True,
        1,
    )
    assert "health check failed on nodeB: restart 1 of 3 without it" in _out(job)


@pytest.mark.parametrize(
    "exclude, said", [(True, "no spare node can replace it"), (False, "exclude_failed_nodes is off")]
)
def test_health_failure_without_a_plan_gives_up(tmp_path: Path, exclude: bool, said: str) -> None:
    job = _job(tmp_path, exclude_failed_nodes=exclude, min_nodes=2)
    assert bh.health_failed(job, "nodeA,nodeB", "") == "give_up"
    (rec,) = _restarts(job)
    assert (rec["node"], rec["action"], rec["counted"]) == ("nodeA,nodeB", "give_up", True)
    assert said in _out(job)


def test_health_failure_gives_up_without_a_plan_when_max_restarts_is_used_up(tmp_path: Path) -> None:
    job = _job(tmp_path, max_restarts=0)
    assert bh.health_failed(job, "nodeB", None) == "give_up"
    (rec,) = _restarts(job)
    assert (rec["action"], rec["failures"]) == ("give_up", 1)
    assert "health check failed on nodeB: giving up after 0 restarts (launch.max_restarts=0)" in _out(job)


SINFO = ["nodeA idle", "nodeB alloc", "nodeC idle", "nodeC idle", "nodeD down*", "nodeE drain", "nodeF idle*", ""]


@pytest.mark.parametrize(
    "nodes, excluded, sinfo, min_nodes, plan, note",
    [
        (["nodeB"], [], SINFO, 2, "nodeB ", ""),  # nodeA and nodeC: a spare for nodeB
        (["nodeB"], ["nodeC"], SINFO, 2, "", "not excluding nodeB: partition gpu has no spare node (1 usable"),
        (["nodeB"], ["nodeC"], SINFO, 1, "nodeB,nodeC 1", "no spare node in gpu: continuing on 1 nodes"),
        (["nodeB", "nodeA"], [], SINFO, 1, "nodeA,nodeB 1", "continuing on 1 nodes (launch.min_nodes=1)"),
        (["nodeA", "nodeB", "nodeC"], [], SINFO, 1, "", "(0 usable, 2 needed, min_nodes 1)"),
        ([], [], SINFO, 1, "", ""),  # nothing to exclude
        (["nodeB"], [], [], 1, "", "not excluding nodeB"),  # sinfo said nothing
    ],
)
def test_exclusion_plan(
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    nodes: list[str],
    excluded: list[str],
    sinfo: list[str],
    min_nodes: int,
    plan: str,
    note: str,
) -> None:
    job = _job(tmp_path, min_nodes=min_nodes)
    assert bh.exclusion_plan(job, nodes, excluded, sinfo) == plan
    err = capsys.readouterr().err  # on stderr: the job's .err
    assert (note in err) if note else err == ""
    assert err == "" or err.startswith("[mltrain ") and "job 7 attempt 0] " in err
    assert _out(job) == ""


def test_no_exclusion_when_the_cluster_spec_turns_it_off(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert bh.exclusion_plan(_job(tmp_path, exclude_failed_nodes=False), ["nodeB"], [], SINFO) == ""
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ the command line the batch script uses


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None, stdin: str = "") -> str:
    run = tmp_path / "run"
    install_batch_helper(run)  # run from there, as the batch script runs it
    environ = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_PARTITION": "gpu", **(env or {})}
    p = subprocess.run(
        [
            sys.executable,
            "-B",
            str(run / "slurm" / "batch_helper.py"),
            "--run-dir",
            str(run),
            "--max-restarts",
            "2",
            *args,
        ],
        env={"PATH": os.environ["PATH"], **environ},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_cli_record_prints_the_step_it_recorded(tmp_path: Path) -> None:
    assert _cli(tmp_path, "record", "admin_requeue", "", "requeue", "false") == "null\n"
    _commit(tmp_path / "run", 50)
    assert _cli(tmp_path, "record", "node_failure", "n1", "requeue", "true", env={"SLURM_RESTART_COUNT": "3"}) == "50\n"
    first, second = bh.read_jsonl(tmp_path / "run" / "restarts.jsonl")
    assert (first["node"], first["counted"], first["attempt"], first["slurm_restart_count"]) == (None, False, 0, None)
    assert (second["node"], second["failures"], second["attempt"], second["slurm_restart_count"]) == ("n1", 1, 3, 3)
    assert _cli(tmp_path, "latest-step") == "50\n"


def test_cli_term_plan_and_kill_cause(tmp_path: Path) -> None:
    assert _cli(tmp_path, "kill-cause") == "\n"
    (tmp_path / "run" / "slurm" / "7.err").write_text(
        "[mltrain] attempt 0 of job 7 starts\n*** JOB 7 ON n CANCELLED AT t DUE TO TIME LIMIT ***\n"
    )
    assert _cli(tmp_path, "kill-cause", "--wait-s", "1") == "time_limit\n"
    assert _cli(tmp_path, "term-plan", "--cause", "time_limit") == "time_limit give_up true -\n"
    assert _cli(tmp_path, "term-plan", "--job-state", "RUNNING", "--restarts", "1") == (
        "admin_requeue requeue false release\n"
    )


def test_cli_decide_health_and_exclusion_plan(tmp_path: Path) -> None:
    args = ["decide", "--reason", "failed", "--rc", "1", "--torchrun-log", str(tmp_path / "t")]
    assert _cli(tmp_path, "--max-in-place", "1", *args) == "probe\n"
    assert _cli(tmp_path, "--max-in-place", "1", *args, "--nodes-healthy", "0") == "requeue\n"
    assert _cli(tmp_path, *args, "--hyperpod") == "exit 1\n"
    assert _cli(tmp_path, "health-failed", "--nodes", "nodeB") == "give_up\n"  # max_restarts 2 used up above
    fresh = tmp_path / "fresh"
    assert _cli(fresh, "health-failed", "--nodes", "nodeB") == "plan\n"
    assert _cli(fresh, "health-failed", "--nodes", "nodeB", "--plan", "nodeB ") == "requeue\n"
    assert _cli(fresh, "health-failed", "--nodes", "nodeB", "--plan", "") == "give_up\n"
    plan = _cli(tmp_path, "exclusion-plan", "--nodes", "nodeB", "--excluded", "nodeX", stdin="nodeA idle\nnodeC idle\n")
    assert plan == "nodeB,nodeX \n"
    # --min-nodes defaults to the job's node count: no shrinking
    assert _cli(tmp_path, "exclusion-plan", "--nodes", "nodeB", stdin="nodeA idle\nnodeB idle\n") == "\n"
    assert _cli(tmp_path, "--min-nodes", "1", "exclusion-plan", "--nodes", "nodeB", stdin="nodeA idle\n") == "nodeB 1\n"


def test_cli_allocations(tmp_path: Path) -> None:
    assert _cli(tmp_path, "alloc-start", "--time-limit-s", "60", "nodeA", "nodeB") == ""
    assert _cli(tmp_path, "alloc-end") == ""
    assert _cli(tmp_path, "alloc-recover", env={"SLURM_RESTART_COUNT": "1"}) == ""  # closed already: nothing
    start, end = bh.read_jsonl(tmp_path / "run" / "slurm" / "allocations.jsonl")
    assert (start["nodes"], start["time_limit_s"], end["event"]) == (["nodeA", "nodeB"], 60, "end")


def test_job_from_slurms_environment(tmp_path: Path) -> None:
    args = bh._parser().parse_args(["--run-dir", str(tmp_path), "--checkpoint-dir", "/c", "alloc-end"])
    job = bh.job_from(args, {"SLURM_JOB_ID": "9", "SLURM_RESTART_COUNT": "2", "SLURM_JOB_NUM_NODES": "4"})
    assert (job.job_id, job.attempt, job.restart_count_set, job.num_nodes, job.min_nodes) == ("9", 2, True, 4, 4)
    assert job.checkpoint_dir == Path("/c") and job.exclude_failed_nodes and job.partition == ""
    job = bh.job_from(args, {"SLURM_JOB_ID": "9"})
    assert (job.attempt, job.restart_count_set, job.num_nodes, job.min_nodes) == (0, False, 1, 1)
    assert job.out_log == tmp_path / "slurm" / "9.out" and job.err_log == tmp_path / "slurm" / "9.err"


# ------------------------------------------------------------------ a stop before the run's deadline


def _deadline_file(job: bh.Job, source: str | None) -> None:
    (job.run_dir / "control").mkdir(exist_ok=True)
    if source is not None:
        rec = {"at": "2026-12-20T11:00:00Z", "time": 1797764400.0, "source": source}
        (job.run_dir / bh.DEADLINE_FILE).write_text(json.dumps(rec) + "\n")


@pytest.mark.parametrize("source", ["--deadline", "capacity block end", None])
@pytest.mark.parametrize("stop_requested", [False, True])
def test_a_deadline_stop_is_not_requeued(tmp_path: Path, source: str | None, stop_requested: bool) -> None:
    """The allocation ends at a --deadline or a capacity block's end (or nobody knows which): the checkpointed
    stop is recorded and the job ends, even when the time limit's USR1 came at the same time."""
    job = _job(tmp_path)
    _commit(job.run_dir, 40)
    _deadline_file(job, source)
    assert _decide(job, _ended("deadline", 0, stop_requested=stop_requested)) == "exit 0"
    (rec,) = _restarts(job)
    assert (rec["cause"], rec["action"], rec["counted"], rec["step"]) == ("deadline", "none", False, 40)
    words = source or "source unknown"
    assert f"stopped before its deadline ({words}), checkpointed: not requeueing" in _out(job)


def test_a_deadline_that_is_only_the_time_limit_requeues_like_a_time_limit_stop(tmp_path: Path) -> None:
    job = _job(tmp_path)
    _commit(job.run_dir, 40)
    _deadline_file(job, bh.DEADLINE_TIME_LIMIT)
    assert _decide(job, _ended("deadline", 0)) == "requeue"
    (rec,) = _restarts(job)
    assert (rec["cause"], rec["action"], rec["counted"], rec["step"]) == ("preempted", "requeue", False, 40)
    assert "stopped before the job's time limit (checkpointed): requeueing as after a time-limit stop" in _out(job)
    # and, like a preemption, twice without a new checkpoint counts
    assert _decide(job, _ended("deadline", 0)) == "requeue"
    assert _restarts(job)[-1]["counted"] is True


def test_a_deadline_stop_of_a_cancelled_run_is_a_cancel(tmp_path: Path) -> None:
    job = _job(tmp_path)
    _deadline_file(job, bh.DEADLINE_TIME_LIMIT)
    (job.run_dir / "control" / "cancelled").write_text("7\n")
    assert _decide(job, _ended("deadline", 0)) == "exit 0"
    assert [r["cause"] for r in _restarts(job)] == ["cancelled"]
