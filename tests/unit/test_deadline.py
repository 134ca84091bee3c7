"""Deadlines: parsing `--deadline`, the earliest of the deadlines a run has, the margin from its measured saves,
the stop decision, and a real run that checkpoints and stops before its deadline, then resumes."""

from __future__ import annotations

import json
import time

import pytest
from tests.helpers import tiny_run_config

from mltrain import exit_codes, rundir
from mltrain.checkpoint_rule import MARKER
from mltrain.train import deadline as D

NOW = 1_797_761_400.0  # 2026-12-20T10:10:00Z


def test_parse_relative_and_iso():
    assert D.parse_deadline("+90m", NOW) == NOW + 5400
    assert D.parse_deadline("+2h", NOW) == NOW + 7200
    assert D.parse_deadline("+1d", NOW) == NOW + 86400
    assert D.parse_deadline("+30s", NOW) == NOW + 30
    assert D.parse_deadline("+1.5h", NOW) == NOW + 5400
    at = D.parse_deadline("2026-12-20T11:30Z", NOW)
    assert D.format_utc(at) == "2026-12-20T11:30:00Z" and at == NOW + 80 * 60
    assert D.parse_deadline("2026-12-20T12:30:00+01:00", NOW) == at
    assert D.parse_deadline(" 2026-12-20T11:30:00z ", NOW) == at


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2026-12-20T11:30", "no time zone; add Z for UTC"),
        ("+5x", "a relative deadline is +<number><s|m|h|d>"),
        ("+0m", "must be in the future"),
        ("tomorrow", "not a time; give a UTC time like"),
        ("", "not a time"),
    ],
)
def test_bad_deadline_is_one_line_config_error(text, words):
    with pytest.raises(D.DeadlineError) as e:
        D.parse_deadline(text, NOW)
    assert words in str(e.value) and "\n" not in str(e.value) and e.value.exit_code == 2


def test_given_deadline_refuses_the_past_and_hands_down_an_absolute_time():
    with pytest.raises(D.DeadlineError, match="is in the past"):
        D.given_deadline("2020-01-01T00:00Z", NOW)
    d = D.given_deadline("+2h", NOW)
    assert d == D.Deadline(NOW + 7200, D.SOURCE_FLAG)
    env = d.env()
    assert env == {"MLTRAIN_DEADLINE": "2026-12-20T12:10:00Z", "MLTRAIN_DEADLINE_SOURCE": "--deadline"}
    assert D.env_deadline(env) == d  # a later start reads the same time, not "+2h" again


def test_bad_handed_down_deadline_names_the_variable():
    with pytest.raises(D.DeadlineError, match="MLTRAIN_DEADLINE 'soon'"):
        D.env_deadline({"MLTRAIN_DEADLINE": "soon"})


def _runner(answers):
    calls = []

    def run(cmd):
        calls.append(cmd[0])
        return answers.get(cmd[0])

    return run, calls


def test_slurm_end_time_from_env_then_squeue_then_scontrol():
    local = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(NOW + 600))
    env = {"SLURM_JOB_ID": "7"}
    run, calls = _runner({"squeue": local + "\n", "scontrol": "x"})
    assert D.slurm_end_time(env, run, NOW) == NOW + 600 and calls == ["squeue"]
    run, calls = _runner({"squeue": "N/A\n", "scontrol": f"JobId=7 StartTime=x EndTime={local} Deadline=N/A"})
    assert D.slurm_end_time(env, run, NOW) == NOW + 600 and calls == ["squeue", "scontrol"]
    run, calls = _runner({})
    assert D.slurm_end_time({**env, "SLURM_JOB_END_TIME": str(int(NOW + 60))}, run, NOW) == NOW + 60
    assert calls == []  # set by newer Slurm versions: no query
    assert D.slurm_end_time(env, _runner({})[0], NOW) is None  # no squeue/scontrol (a container): unknown
    assert D.slurm_end_time({}, _runner({"squeue": local})[0], NOW) is None  # not in a Slurm job
    far = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(NOW + 400 * 86400))
    assert D.slurm_end_time(env, _runner({"squeue": far})[0], NOW) is None  # an unlimited job's placeholder


def test_the_earliest_deadline_wins_and_a_tie_goes_to_the_given_one():
    given = D.Deadline(NOW + 3600, D.SOURCE_BLOCK)
    env = given.env()
    assert D.find_deadline(env, lambda e: NOW + 7200) == given
    assert D.find_deadline(env, lambda e: NOW + 1800) == D.Deadline(NOW + 1800, D.SOURCE_TIME_LIMIT)
    assert D.find_deadline(env, lambda e: NOW + 3600) == given
    assert D.find_deadline({}, lambda e: NOW + 1800) == D.Deadline(NOW + 1800, D.SOURCE_TIME_LIMIT)
    assert D.find_deadline({}, lambda e: None) is None


def test_margin_is_the_measured_save_times_the_safety_factor_plus_a_step():
    m = D.Margin(D.first_save_estimate(16e6))  # a tiny model: the floor, doubled
    assert m.first_save_s == 2 * D.MIN_SAVE_S and not m.measured
    assert D.first_save_estimate(4e9) == 2 * 4e9 / D.WRITE_BYTES_PER_S  # a big shard: by its size
    m.observe_step(0.5)
    assert m.seconds() == pytest.approx(10 * D.SAFETY_FACTOR + 0.5 + D.SLACK_S)
    m.observe_save(2.0)
    m.observe_save(4.0)
    m.observe_save(3.0)
    m.observe_step(0.8)
    assert m.measured and m.save_s == 4.0 and m.step_s == 0.8  # the largest save seen, the slowest recent step
    assert m.seconds() == pytest.approx(4.0 * D.SAFETY_FACTOR + 0.8 + D.SLACK_S)
    assert "margin 8.8 s: save 4.0 s (measured) x 1.5 + step 0.8 s + 2 s" in m.words()
    for _ in range(D.STEP_WINDOW):
        m.observe_step(0.1)
    assert m.step_s == 0.1  # only the recent steps count


def test_due_when_now_plus_margin_reaches_the_deadline():
    now = [NOW]
    m = D.Margin(10.0)
    m.observe_step(1.0)
    clock = D.DeadlineClock(D.Deadline(NOW + 100, D.SOURCE_FLAG), m, clock=lambda: now[0])
    assert not clock.due()  # 100 s left, margin 18 s
    now[0] = NOW + 81.9
    assert not clock.due()
    now[0] = NOW + 82
    assert clock.due()
    clock.save_started()
    clock.committed()
    assert m.measured and m.save_s < 1.0
    assert not clock.due()  # the measured save is much shorter than the estimate
    now[0] = NOW + 97.5
    assert clock.due() and clock.left_s() == pytest.approx(2.5)


def test_write_deadline_records_and_clears(tmp_path):
    (tmp_path / "control").mkdir()
    d = D.Deadline(NOW, D.SOURCE_TIME_LIMIT)
    D.write_deadline(tmp_path, d)
    assert json.loads((tmp_path / D.DEADLINE_FILE).read_text()) == {
        "at": "2026-12-20T10:10:00Z",
        "time": NOW,
        "source": "slurm time limit",
    }
    D.write_deadline(tmp_path, None)  # a later start without a deadline
    assert not (tmp_path / D.DEADLINE_FILE).exists()


def test_previous_saves_are_the_newest_synchronous_save_times(tmp_path):
    recs = [{"kind": "checkpoint", "step": i, "ok": True, "save_s": float(i)} for i in range(1, 9)]
    recs += [
        {"kind": "checkpoint", "step": 9, "ok": False, "save_s": 99.0},  # failed: not a save time
        {"kind": "checkpoint", "step": 10, "ok": True, "stall_s": 0.1},  # async: only the stall is known
        {"kind": "train", "step": 10, "save_s": 50.0},
    ]
    (tmp_path / rundir.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"torn')
    assert D.previous_saves(tmp_path) == [4.0, 5.0, 6.0, 7.0, 8.0]
    assert D.previous_saves(tmp_path / "none") == []


def test_time_limit_source_matches_the_batch_helper():
    from mltrain.launch import batch_helper

    assert batch_helper.DEADLINE_TIME_LIMIT == D.SOURCE_TIME_LIMIT
    assert batch_helper.DEADLINE == exit_codes.REASON_DEADLINE


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / rundir.METRICS_FILE).read_text().splitlines() if x.strip()]


@pytest.mark.usefixtures("keep_signal_handlers")
def test_run_checkpoints_and_stops_before_its_deadline_then_resumes(tmp_path, tiny_data_dir, monkeypatch, capsys):
    """A deadline 10 s away, steps paced to 0.25 s and a checkpoint every step (so the margin is measured from
    the first boundary): the trainer stops before the deadline with its last step committed, exit reason
    `deadline`, exit 75; a start with a later deadline resumes from that step, its margin measured from the start."""
    from mltrain.config import RunConfig
    from mltrain.train.checkpoint import find_checkpoints
    from mltrain.train.trainer import run_training

    for k in ("SLURM_JOB_ID", "SLURM_JOB_END_TIME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("MLTRAIN_FAULT_STEP_S", "0.25")
    raw = tiny_run_config(tmp_path, tiny_data_dir, "dl", max_steps=400, log_every=5)
    raw["checkpoint"] = {"every_steps": 1, "keep_last": 2}
    cfg = RunConfig.model_validate(raw)
    run_dir = tmp_path / "runs" / "dl"
    at = time.time() + 10
    monkeypatch.setenv("MLTRAIN_DEADLINE", D.format_utc(at))
    at = D.parse_deadline(D.format_utc(at))  # whole seconds, as handed down
    assert run_training(cfg) == exit_codes.REQUEUE
    stopped = time.time()
    out = capsys.readouterr().out
    assert stopped < at, out
    assert rundir.read_exit_reason(run_dir) == exit_codes.REASON_DEADLINE
    recs = _records(run_dir)
    start, exit_ = recs[0], recs[-1]
    assert start["deadline"] == {"at": D.format_utc(at), "time": at, "source": "--deadline"}
    assert exit_["kind"] == "exit" and exit_["reason"] == "deadline"
    step = exit_["step"]
    assert 1 < step < 400, out  # not at the first boundary: the measured save, not the 10 s estimate
    ckpts = find_checkpoints(run_dir)
    assert ckpts[-1][0] == step
    assert json.loads((ckpts[-1][1] / MARKER).read_text())["time"] < at  # committed before the deadline
    assert f"checkpointing step {step}, then exiting" in out
    assert "stopped before its deadline (--deadline" in out and "exit 75" in out
    assert json.loads((run_dir / D.DEADLINE_FILE).read_text())["source"] == "--deadline"

    monkeypatch.delenv("MLTRAIN_FAULT_STEP_S")
    monkeypatch.setenv("MLTRAIN_DEADLINE", D.format_utc(time.time() + 3600))
    raw["train"]["max_steps"] = step + 2
    assert run_training(RunConfig.model_validate(raw)) == exit_codes.DONE
    out = capsys.readouterr().out
    assert "(measured) x 1.5" in out  # a resumed start begins with the run's measured saves
    starts = [r for r in _records(run_dir) if r.get("kind") == "start"]
    assert starts[-1]["step"] == step and starts[-1]["deadline"]["time"] > at
    assert rundir.read_exit_reason(run_dir) == exit_codes.REASON_DONE
