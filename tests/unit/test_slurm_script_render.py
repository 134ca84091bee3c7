"""`mltrain submit` of a script run (script: in the run config): the batch script it renders, the files it
writes, and the checkpoint rule the batch script applies (its batch_helper.py, run here as a file the way the
script runs it) against mltrain.runtime's. The same script runs on a real Slurm in
tests/integration/test_slurm_script.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mltrain import runtime
from mltrain.config import load_run_config
from mltrain.errors import ConfigError
from mltrain.launch.slurm import prepare_submission, submit_run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hf_trainer"
GOLDEN_RUN = ROOT / "tests" / "golden" / "sbatch" / "run.yaml"


def _spec(tmp_path: Path) -> Path:
    spec = tmp_path / "local.yaml"
    spec.write_text(
        (ROOT / "configs/clusters/local.yaml").read_text().replace("run_base_dir: .", f"run_base_dir: {tmp_path}/base")
    )
    return spec


def _script_run(tmp_path: Path, args: str = '["--max_steps", "9", "--note", "a b"]') -> Path:
    """A run config in its own directory with a relative script path (resolved against that directory)."""
    d = tmp_path / "proj"
    (d / "src").mkdir(parents=True, exist_ok=True)
    (d / "src" / "train.py").write_text("print('hi')\n")
    (d / "run.yaml").write_text(
        f"name: mine\nscript:\n  path: src/train.py\n  args: {args}\n  resume_arg: --resume_from_checkpoint\n"
        "  checkpoint_dir: ckpts\n"
    )
    return d / "run.yaml"


def test_script_run_renders_its_own_torchrun_line(tmp_path: Path) -> None:
    run_yaml = _script_run(tmp_path)
    sub = prepare_submission(run_yaml, _spec(tmp_path))
    s = sub.script
    run_dir = tmp_path / "base" / "runs" / "mine"
    assert sub.run_dir == run_dir
    script_abs = tmp_path / "proj" / "src" / "train.py"
    # each node: cd to the run config's directory, the wrapper module, the script (absolute) and its args (quoted)
    assert f"export MLTRAIN_SCRIPT_WORKDIR={tmp_path / 'proj'}\n" in s
    assert 'bash -c \'cd "$MLTRAIN_SCRIPT_WORKDIR" && exec "$@" 2> >(tee -a "$MLTRAIN_TORCHRUN_LOG.' in s
    assert f"--max-restarts=0 -m mltrain.launch.script {script_abs} --max_steps 9 --note 'a b' &\n" in s
    assert "-m mltrain train" not in s
    # the ranks' environment, exported once
    assert f"export MLTRAIN_RUN_DIR={run_dir}\n" in s
    assert f"export MLTRAIN_CHECKPOINT_DIR={run_dir / 'ckpts'}\n" in s
    assert "export MLTRAIN_RUN_NAME=mine\n" in s and "export MLTRAIN_RESUME_ARG=--resume_from_checkpoint\n" in s
    # every torchrun start clears the previous start's verdict files, the rank records included
    assert 'rm -f "$RUN_DIR/control/stop" "$RUN_DIR/control/exit_reason" "$RUN_DIR/control/exit_message" ' in s
    assert '"$RUN_DIR"/control/ranks/*.json\n' in s
    # the script's checkpoints, not the built-in trainer's step_N/COMMITTED only
    assert f"--checkpoint-dir {run_dir / 'ckpts'} " in s
    # the recovery logic and the per-node stderr tee (read by the helper's decision) are the built-in trainer's
    assert 'helper decide "${DECIDE[@]}"' in s and '--torchrun-log "$MLTRAIN_TORCHRUN_LOG"' in s
    assert "exclusion_plan" in s and "--kill-on-bad-exit=1" in s
    assert not any("train.parallel" in w for w in sub.warnings)  # a script run has no train.parallel
    # the copy the batch script keeps: a valid run config whose script path no longer depends on its directory
    assert sub.cfg.script is not None and sub.cfg.script.path == str(script_abs)


def test_builtin_run_still_renders_the_trainer(tmp_path: Path) -> None:
    s = prepare_submission(GOLDEN_RUN, _spec(tmp_path)).script
    assert '--max-restarts=0 -m mltrain train "$CONFIG" &\n' in s and "MLTRAIN_SCRIPT_WORKDIR" not in s
    assert 'rm -f "$RUN_DIR/control/stop" "$RUN_DIR/control/exit_reason"\n' in s


def test_missing_script_is_one_line(tmp_path: Path) -> None:
    run_yaml = _script_run(tmp_path)
    (tmp_path / "proj" / "src" / "train.py").unlink()
    with pytest.raises(ConfigError, match=r"run\.yaml: script\.path: .*train\.py is not a file"):
        prepare_submission(run_yaml, _spec(tmp_path))
    p = subprocess.run(
        [sys.executable, "-m", "mltrain", "submit", str(run_yaml), "--cluster", str(_spec(tmp_path)), "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr and "is not a file" in p.stderr, p.stderr


def test_submit_writes_a_loadable_config_and_skips_the_trainer_prechecks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stand-in sbatch (records its call; the real one: tests/integration/test_slurm_script.py). The built-in
    trainer's prechecks (data manifest...) would refuse this run: they must not run for a script run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch.calls"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho 4242\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    run_yaml = _script_run(tmp_path)
    monkeypatch.chdir(tmp_path)  # the run config's directory is not the submit directory
    assert submit_run(run_yaml, _spec(tmp_path)) == "4242"
    run_dir = tmp_path / "base" / "runs" / "mine"
    assert calls.read_text().split() == ["--parsable", str(run_dir / "slurm" / "job.sbatch")]
    for f in (run_dir / "slurm" / "run.yaml", run_dir / "config.yaml"):
        cfg = load_run_config(f)  # valid from where it lives (status, report and a later submit read it)
        assert cfg.script is not None and cfg.script.path == str(tmp_path / "proj" / "src" / "train.py")
        assert cfg.script.checkpoint_dir == "ckpts" and cfg.script.args[-1] == "a b"
        assert "train" not in yaml.safe_load(f.read_text())  # the built-in trainer's defaults would mislead status
    assert json.loads((run_dir / "slurm" / "jobs.jsonl").read_text())["job_id"] == "4242"


def test_cli_submit_accepts_the_example_script_run(tmp_path: Path) -> None:
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "mltrain",
            "submit",
            str(EXAMPLE / "run.yaml"),
            "--cluster",
            str(_spec(tmp_path)),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    assert f"-m mltrain.launch.script {EXAMPLE / 'train.py'} --max_steps 60 --save_steps 20 &" in p.stdout


# ------------------------------------------------------------------ the batch script's checkpoint rule, run as it runs it


def _script_latest_step(script: str, run_dir: Path) -> int | None:
    """The step the batch script records: its own head (variables and the helper() call) running the helper
    file `mltrain submit` installs beside it, with the host's python3 and nothing of mltrain on the path."""
    from mltrain.launch.slurm import install_batch_helper

    install_batch_helper(run_dir)
    head = script[script.index("set -uo pipefail\n") : script.index("\n}\n", script.index("helper() {")) + 3]
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "7"}
    p = subprocess.run(["bash", "-c", f"{head}helper latest-step"], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and not p.stderr, p.stderr
    out = p.stdout.strip()
    return None if out == "null" else int(out)


def _py_latest_step(ckpt_dir: Path) -> int | None:
    latest = runtime.latest_checkpoint(ckpt_dir)
    return None if latest is None else runtime.checkpoint_step(Path(latest))


def _hf(d: Path, step: int, *files: str, state: str | None = None) -> None:
    d.mkdir(parents=True)
    (d / "trainer_state.json").write_text(
        state
        if state is not None
        else json.dumps({"best_global_step": None, "global_step": step, "log_history": [{"step": 1}]}, indent=2)
    )
    for f in files:
        (d / f).parent.mkdir(parents=True, exist_ok=True)
        (d / f).write_text("x") if not f.endswith("/") else (d / f).mkdir(exist_ok=True)


def test_batch_script_checkpoint_rule_agrees_with_runtime(tmp_path: Path) -> None:
    """Each case adds one checkpoint dir; after each, the batch script's newest complete step (what restarts.jsonl
    records and the 'preempted without a new checkpoint' rule compares) equals mltrain.runtime's."""
    sub = prepare_submission(_script_run(tmp_path), _spec(tmp_path))
    c = tmp_path / "base" / "runs" / "mine" / "ckpts"
    steps: list[int | None] = []

    def check() -> None:
        got, want = _script_latest_step(sub.script, sub.run_dir), _py_latest_step(c)
        assert got == want, (sorted(p.name for p in c.iterdir()) if c.exists() else [], got, want)
        steps.append(got)

    check()  # no dir at all
    c.mkdir(parents=True)
    (c / "checkpoint-10").mkdir()
    (c / "checkpoint-10" / runtime.CHECKPOINT_COMPLETE).write_text("")
    check()
    (c / "checkpoint-20").mkdir()  # killed mid-save: weights only
    (c / "checkpoint-20" / "model.safetensors").write_text("x")
    check()
    _hf(c / "checkpoint-30", 30, "model.safetensors")  # saved without the callback: trainer_state + weights
    check()
    _hf(c / "checkpoint-40", 39, "model.safetensors")  # trainer_state of another step
    check()
    _hf(c / "checkpoint-50", 50, "model.safetensors", state='{\n  "global_step": 50,\n  "log_hist')  # cut short
    check()
    index = json.dumps(
        {"metadata": {}, "weight_map": {"a.weight": "model-1-of-2.safetensors", "b": "model-2-of-2.safetensors"}}
    )
    _hf(c / "checkpoint-60", 60, "model-1-of-2.safetensors")  # a shard missing
    (c / "checkpoint-60" / "model.safetensors.index.json").write_text(index)
    check()
    _hf(c / "checkpoint-70", 70, "model-1-of-2.safetensors", "model-2-of-2.safetensors")
    (c / "checkpoint-70" / "model.safetensors.index.json").write_text(index)
    check()
    _hf(c / "checkpoint-80", 80, "global_step80/")  # DeepSpeed's engine state
    check()
    (c / "step_00000090").mkdir()
    (c / "step_00000090" / "COMMITTED").write_text("{}")
    check()
    (c / "checkpoint-100").write_text("a file")
    (c / "checkpoint-110.tmp").mkdir()
    (c / "checkpoint-x").mkdir()
    check()
    _hf(c / "global_step120", 120, "pytorch_model.bin")
    check()
    assert steps == [None, 10, 10, 30, 30, 30, 30, 70, 80, 90, 90, 120]


def test_submit_script_option_generates_the_run_config(tmp_path: Path) -> None:
    """`mltrain submit --script train.py --cluster C -- ARGS`: run name = the script's stem, ARGS verbatim, the
    current directory as the script's working directory; the generated config is not left behind."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_train.py").write_text("print('hi')\n")
    cmd = [sys.executable, "-m", "mltrain", "submit", "--script", "my_train.py", "--cluster", str(_spec(tmp_path))]
    p = subprocess.run(
        [*cmd, "--dry-run", "--", "--max_steps", "5", "--lr", "0.1"], cwd=work, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert "#SBATCH --job-name=my_train\n" in p.stdout and f"export MLTRAIN_SCRIPT_WORKDIR={work}\n" in p.stdout
    assert f"-m mltrain.launch.script {work / 'my_train.py'} --max_steps 5 --lr 0.1 &\n" in p.stdout
    assert sorted(x.name for x in work.iterdir()) == ["my_train.py"]
    p = subprocess.run(
        [*cmd[:-4], "--cluster", str(_spec(tmp_path)), "--dry-run"], cwd=work, capture_output=True, text=True
    )
    assert p.returncode != 0 and "give one RUN_YAML" in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_submit_without_script_still_rejects_typos(tmp_path: Path) -> None:
    """Unknown options are let through for --script's ARGS; without --script a typo is named as an unknown
    option (not "give one RUN_YAML")."""
    run = tmp_path / "run.yaml"
    run.write_text("name: r\nscript: {path: t.py}\n")
    (tmp_path / "t.py").write_text("")
    base = [sys.executable, "-m", "mltrain", "submit", str(run), "--cluster", str(_spec(tmp_path))]
    p = subprocess.run([*base, "--dry-rn"], capture_output=True, text=True)
    assert p.returncode == 2 and "No such option '--dry-rn'" in p.stderr, p.stderr
    p = subprocess.run([*base, "extra"], capture_output=True, text=True)
    assert p.returncode == 2 and "unexpected extra argument(s): extra" in p.stderr, p.stderr
