"""`mltrain doctor` on this CPU machine: GPU rows WARN, nothing crashes, stable JSON keys, exit codes."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from tests.helpers import mltrain_cmd

from mltrain.ops.checks import FAIL, PASS, WARN
from mltrain.ops.doctor import check_env, check_run_dir

GOLDEN_TOP_KEYS = ["host", "status", "checks"]
GOLDEN_CHECK_KEYS = ["name", "status", "detail", "remedy"]
GOLDEN_NAMES = {"python", "torch", "cuda", "cudnn", "nccl", "gpus", "efa", "run dir", "s3", "slurm", "pyxis"}


def _doctor(tmp_path, *args, env_extra=None):
    env = {**os.environ, "MLTRAIN_BASE_DIR": str(tmp_path), **(env_extra or {})}
    for k in ("NCCL_P2P_DISABLE", "NCCL_DEBUG", "CUDA_LAUNCH_BLOCKING"):
        env.pop(k, None)
    env.update(env_extra or {})
    return subprocess.run(mltrain_cmd("doctor", *args), env=env, capture_output=True, text=True, timeout=120)


def test_doctor_json_on_cpu_machine(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: this test pins the CPU machine's rows (GPU rows WARN)")
    r = _doctor(tmp_path, "--json", env_extra={"NCCL_P2P_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert list(doc) == GOLDEN_TOP_KEYS
    assert all(list(c) == GOLDEN_CHECK_KEYS for c in doc["checks"])
    by_name = {c["name"]: c for c in doc["checks"]}
    assert set(by_name) >= GOLDEN_NAMES
    for gpu_row in ("cuda", "gpus"):
        assert by_name[gpu_row]["status"] == WARN and by_name[gpu_row]["remedy"]
    assert by_name["run dir"]["status"] in (PASS, WARN) and str(tmp_path) in by_name["run dir"]["detail"]
    assert by_name["env NCCL_P2P_DISABLE"]["status"] == WARN
    assert not any(c["status"] == FAIL for c in doc["checks"])
    assert doc["status"] == WARN


def test_doctor_fails_on_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the base dir should be")
    rows = check_run_dir(blocker)
    assert rows[0].status == FAIL and "not writable" in rows[0].detail
    r = _doctor(blocker)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "FAIL" in r.stdout and "Traceback" not in r.stderr


def test_doctor_bad_config_is_one_line(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\nmodel: {preset: tiny}\nlog: {promethus: {}}\n")
    r = _doctor(tmp_path, "--config", str(cfg))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "bad.yaml" in r.stderr


def test_env_check_names_known_bad_variables():
    rows = check_env({"NCCL_ALGO": "Ring", "NCCL_DEBUG": "INFO"})
    names = {r.name for r in rows}
    assert names == {"env NCCL_ALGO", "env NCCL_DEBUG"} and all(r.status == WARN for r in rows)
    assert check_env({"NCCL_DEBUG": "WARN"})[0].status == PASS


def test_a_check_that_raises_is_a_fail_row_and_exit_1(tmp_path, monkeypatch, capsys):
    """A crashing check must never read as healthy: its row FAILs, names the exception, and the command exits 1."""
    from mltrain.ops import doctor

    def boom():
        raise RuntimeError("fi_info segfaulted")

    monkeypatch.setattr(doctor, "check_efa", boom)
    monkeypatch.setenv("MLTRAIN_BASE_DIR", str(tmp_path))
    rows = doctor.run_doctor(tmp_path)
    (efa,) = [r for r in rows if r.name == "efa"]
    assert efa.status == FAIL and efa.detail == "check crashed: RuntimeError: fi_info segfaulted"
    assert [r.name for r in rows if r.status == FAIL] == ["efa"]  # the others still ran
    assert {"python", "torch", "run dir", "slurm"} <= {r.name for r in rows}
    assert doctor.doctor_report(rows)["status"] == FAIL
    assert doctor.doctor_command(None, None, True, None) == 1
    doc = json.loads(capsys.readouterr().out)
    efa_row = next(c for c in doc["checks"] if c["name"] == "efa")
    assert doc["status"] == FAIL and efa_row["status"] == FAIL


def test_worst_ranks_fail_over_warn_over_pass_and_skip():
    from mltrain.ops.checks import SKIP, Check, worst

    def rows(*statuses):
        return [Check(str(i), s, "") for i, s in enumerate(statuses)]

    assert worst(rows()) == PASS
    assert worst(rows(PASS, SKIP)) == PASS
    assert worst(rows(SKIP, WARN, PASS)) == WARN
    assert worst(rows(WARN, FAIL, PASS)) == FAIL
    assert worst(rows(FAIL)) == FAIL
