"""script: run configs, the command built for a user script, and the launcher's verdict on how it ended."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mltrain import exit_codes, rundir, runtime
from mltrain.config import load_run_config
from mltrain.errors import ConfigError
from mltrain.launch import script as S

SCRIPT_RUN = "name: byos\nscript:\n  path: train.py\n  args: [--lr, '1e-3']\n"


def _cfg(tmp_path: Path, text: str = SCRIPT_RUN, overrides: list[str] | None = None):
    (tmp_path / "train.py").write_text("print('hi')\n")
    p = tmp_path / "run.yaml"
    p.write_text(text + f"base_dir: {tmp_path}\n")
    return load_run_config(p, overrides), p


def _mltrain(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mltrain", *args], capture_output=True, text=True, cwd=cwd)


def test_script_run_needs_no_model(tmp_path):
    cfg, _ = _cfg(tmp_path)
    assert cfg.model is None and cfg.script.path == "train.py" and cfg.script.resume_arg is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name: x\n", "model: required key is missing"),
        ("name: x\nmodel: {preset: tiny}\nscript: {path: t.py}\n", "script: and model: are both set"),
        ("name: x\nscript: {args: [a]}\n", "script.path: required key is missing"),
        ("name: x\nscript: {path: t.py, resume: x}\n", "script.resume: unknown key"),
    ],
)
def test_bad_script_configs_are_one_line(tmp_path, text, expected):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_run_config(p)
    assert expected in str(e.value) and "\n" not in str(e.value) and str(p) in str(e.value)


def test_builtin_commands_refuse_a_script_run_with_one_line(tmp_path):
    _, p = _cfg(tmp_path)
    r = _mltrain("data", "prepare", str(p), cwd=tmp_path)
    assert r.returncode == exit_codes.CONFIG_ERROR, r.stderr
    err = " ".join(r.stderr.split())
    assert "this command works on runs of the built-in trainer" in err and "Traceback" not in r.stderr
    r = _mltrain("data", "validate", str(p), cwd=tmp_path)
    assert r.returncode == exit_codes.CONFIG_ERROR and "Traceback" not in r.stderr, r.stderr
    # export of a script run's dir (config.yaml written by the launcher)
    run_dir = tmp_path / "runs" / "byos"
    S.prepare_run_dir(load_run_config(p), run_dir)
    r = _mltrain("export", str(run_dir), "--out", str(tmp_path / "hf"), cwd=tmp_path)
    assert (
        r.returncode == exit_codes.CONFIG_ERROR
        and "mltrain export works on runs of the built-in trainer" in " ".join(r.stderr.split())
    )
    # config show still works
    r = _mltrain("config", "show", str(p), cwd=tmp_path)
    assert r.returncode == 0 and "script:" in r.stdout


def test_worker_args_env_and_resume_arg(tmp_path):
    cfg, p = _cfg(tmp_path, SCRIPT_RUN.replace("args:", "resume_arg: --resume_from_checkpoint\n  args:"))
    path, workdir = S.resolve_script(cfg, p)
    assert path == tmp_path / "train.py" and workdir == tmp_path
    run_dir = cfg.run_dir
    args = S.worker_args(cfg, path)
    assert args == ["-m", "mltrain.launch.script", str(path), "--lr", "1e-3"]
    cmd = S.local_command(cfg, path, 2)
    assert cmd[1:5] == ["-m", "mltrain.launch.torchrun", "--standalone", "--nproc-per-node=2"] and cmd[5:] == args
    env = S.script_env(cfg, run_dir)
    assert env[runtime.ENV_RUN_DIR] == str(run_dir.resolve()) and env[S.ENV_RESUME_ARG] == "--resume_from_checkpoint"
    assert env[runtime.ENV_CHECKPOINT_DIR] == str(run_dir.resolve() / "checkpoints")


WRAPPED = """\
import json, os, sys
json.dump({"argv": sys.argv[1:], "resume": os.environ.get("MLTRAIN_RESUME_FROM"), "name": __name__},
          open(os.environ["OUT"], "w"))
sys.exit(int(os.environ.get("CODE", "0")))
"""


def _wrap(tmp_path: Path, env: dict[str, str], code: int = 0) -> tuple[int, dict]:
    (tmp_path / "w.py").write_text(WRAPPED)
    out = tmp_path / "out.json"
    r = subprocess.run(
        [sys.executable, "-m", "mltrain.launch.script", str(tmp_path / "w.py"), "--a", "1"],
        env={**os.environ, **env, "OUT": str(out), "CODE": str(code), "RANK": "0"},
        capture_output=True,
        text=True,
    )
    return r.returncode, json.loads(out.read_text())


def test_wrapper_finds_the_resume_point_at_each_start(tmp_path):
    """The wrapper (what torchrun runs on every node) appends resume_arg + the newest complete checkpoint."""
    run_dir = tmp_path / "runs" / "r"
    ck_dir = run_dir / "checkpoints"
    env = {runtime.ENV_RUN_DIR: str(run_dir), runtime.ENV_CHECKPOINT_DIR: str(ck_dir), S.ENV_RESUME_ARG: "--resume"}
    rc, seen = _wrap(tmp_path, env)
    assert rc == 0 and seen == {"argv": ["--a", "1"], "resume": None, "name": "__main__"}
    ck = ck_dir / "checkpoint-7"
    ck.mkdir(parents=True)
    (ck / runtime.CHECKPOINT_COMPLETE).write_text("7\n")
    (ck_dir / "checkpoint-9").mkdir()  # incomplete: skipped
    rc, seen = _wrap(tmp_path, env, code=75)
    # 75 is recorded in control/ranks/; torchrun gets 0 (it would print a ChildFailedError traceback for 75)
    assert rc == 0 and seen["argv"] == ["--a", "1", "--resume", str(ck)] and seen["resume"] == str(ck)
    assert json.loads((run_dir / S.RANKS_DIR / "0.json").read_text())["code"] == 75
    assert rundir.read_exit_reason(run_dir) == "preempted"
    outside = subprocess.run(  # no run dir to record into: the exit code itself must carry the 75
        [sys.executable, "-m", "mltrain.launch.script", str(tmp_path / "w.py")],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")},
            "OUT": str(tmp_path / "o.json"),
            "CODE": "75",
        },
        capture_output=True,
    )
    assert outside.returncode == 75


def test_slurm_context_is_static_and_shell_quoted(tmp_path):
    cfg, p = _cfg(tmp_path, SCRIPT_RUN.replace("'1e-3'", "'a b'"))
    ctx = S.slurm_context(cfg, p, cfg.run_dir)
    assert ctx["workdir"] == str(tmp_path) and ctx["env"][runtime.ENV_RUN_DIR] == str(cfg.run_dir.resolve())
    assert ctx["worker_args_shell"].endswith("train.py --lr 'a b'")
    assert ctx["worker_args_shell"].startswith("-m mltrain.launch.script ")


def test_missing_script_is_one_line(tmp_path):
    cfg, p = _cfg(tmp_path, SCRIPT_RUN.replace("train.py", "nope.py"))
    with pytest.raises(ConfigError, match="script.path: .*nope.py is not a file"):
        S.resolve_script(cfg, p)


def test_config_yaml_of_a_script_run_has_no_builtin_defaults(tmp_path):
    cfg, _ = _cfg(tmp_path)
    S.prepare_run_dir(cfg, cfg.run_dir)
    data = yaml.safe_load((cfg.run_dir / rundir.CONFIG_FILE).read_text())
    assert "train" not in data and "model" not in data and data["script"]["path"] == "train.py"


def test_stale_stop_and_verdict_files_are_cleared(tmp_path, capsys):
    cfg, _ = _cfg(tmp_path)
    d = cfg.run_dir
    (d / "control" / "ranks").mkdir(parents=True)
    (d / rundir.STOP_FILE).write_text("")
    (d / rundir.EXIT_REASON_FILE).write_text("preempted\n")
    (d / "control" / "ranks" / "0.json").write_text("{}")
    S.prepare_run_dir(cfg, d)
    assert not (d / rundir.STOP_FILE).exists() and rundir.read_exit_reason(d) is None
    assert not list((d / "control" / "ranks").iterdir())
    assert "stale stop request" in capsys.readouterr().out


def _ranks(d: Path, codes: dict[int, int], errors: dict[int, str] | None = None) -> None:
    (d / S.RANKS_DIR).mkdir(parents=True, exist_ok=True)
    for r, c in codes.items():
        (d / S.RANKS_DIR / f"{r}.json").write_text(json.dumps({"rank": r, "code": c, "error": (errors or {}).get(r)}))


@pytest.mark.parametrize(
    "codes, rc, exit_code, reason, words",
    [
        ({0: 0, 1: 0}, 0, 0, "done", "finished"),
        ({0: 75, 1: 75}, 1, 75, "preempted", "exit 75"),
        ({0: 2}, 1, 2, "config_error", "config error: rank 0 exited 2"),  # rank 1 was terminated by torchrun
        ({0: 0}, 1, 1, "lost_rank", "rank failure: rank(s) 1 ended without an exit code"),
        ({0: 1, 1: 0}, 1, 1, "failed", "rank failure: rank 0 exited 1: ValueError: boom"),
        ({0: 75, 1: 3}, 1, 3, "failed", "rank failure: rank 1 exited 3"),
    ],
)
def test_outcome(tmp_path, codes, rc, exit_code, reason, words):
    _ranks(tmp_path, codes, {0: "ValueError: boom"} if codes.get(0) == 1 else None)
    out = S.outcome(tmp_path, rc, world_size=2)
    assert (out.exit_code, out.reason) == (exit_code, reason) and words in out.message
    S.record_outcome(tmp_path, out)
    assert rundir.read_exit_reason(tmp_path) == reason
    assert (tmp_path / rundir.EXIT_MESSAGE_FILE).exists() == (reason not in ("done", "preempted"))


def test_wrapper_turns_a_typed_error_into_one_line_and_exit_2(tmp_path):
    """mltrain's own code in the script (the HF callback) raising ConfigError: one `error:` line, exit 2, the
    rank record names it; no traceback."""
    (tmp_path / "bad.py").write_text("from mltrain.errors import ConfigError\nraise ConfigError('rank 0: use_cpu')\n")
    run_dir = tmp_path / "runs" / "r"
    r = subprocess.run(
        [sys.executable, "-m", "mltrain.launch.script", str(tmp_path / "bad.py")],
        env={**os.environ, runtime.ENV_RUN_DIR: str(run_dir), "RANK": "0"},
        capture_output=True,
        text=True,
    )
    assert r.returncode == exit_codes.CONFIG_ERROR and r.stderr.strip() == "error: rank 0: use_cpu", r.stderr
    rec = json.loads((run_dir / S.RANKS_DIR / "0.json").read_text())
    assert (rec["code"], rec["error"]) == (2, "rank 0: use_cpu")
    assert rundir.read_exit_reason(run_dir) == "config_error"


class _Args:
    def __init__(self, output_dir: Path, mode: str = "distributed") -> None:
        self.output_dir = str(output_dir)
        self.parallel_mode = mode


class _State:
    def __init__(self, step: int, max_steps: int) -> None:
        self.global_step, self.max_steps, self.is_world_process_zero = step, max_steps, True


def test_callback_refuses_ranks_that_train_alone(monkeypatch, tmp_path):
    hf = pytest.importorskip("mltrain.integrations.hf_trainer")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(
        ConfigError, match=r"rank 1: torchrun started WORLD_SIZE=2 ranks but this one joined no process"
    ):
        hf.check_process_group(_Args(tmp_path))  # no process group in this test process
    monkeypatch.setenv("WORLD_SIZE", "1")
    hf.check_process_group(_Args(tmp_path, "not_parallel"))  # one rank: nothing to join


def test_callback_stops_a_finished_run_before_its_first_step(monkeypatch, tmp_path, capsys):
    hf = pytest.importorskip("mltrain.integrations.hf_trainer")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv(runtime.ENV_RUN_DIR, str(tmp_path / "run"))
    monkeypatch.setenv(runtime.ENV_RUN_NAME, "hf")
    ck = tmp_path / "checkpoint-40"
    ck.mkdir()
    (ck / runtime.CHECKPOINT_COMPLETE).write_text("40\n")
    cb = hf.MltrainCallback(install_signal_handler=False)
    with pytest.raises(SystemExit) as e:
        cb.on_train_begin(_Args(tmp_path), _State(40, 40), None)
    assert e.value.code == 0
    assert "hf already finished: step 40 of 40 (checkpoint-40); nothing to train" in capsys.readouterr().out
    assert not (tmp_path / "run" / rundir.METRICS_FILE).exists()  # no start record: no restart counted
    cb.on_train_begin(_Args(tmp_path), _State(20, 40), None)  # a resume mid-run trains on
    assert json.loads((tmp_path / "run" / rundir.METRICS_FILE).read_text())["step"] == 20
