"""Launch-time checks on one machine: each bad value is one line and a non-zero exit."""

from __future__ import annotations

import subprocess

import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.config import RunConfig, check_nproc, load_run_config
from mltrain.errors import ConfigError


def _cfg(parallel: str) -> RunConfig:
    return RunConfig.model_validate({"name": "x", "model": {"preset": "tiny"}, "train": {"parallel": parallel}})


@pytest.mark.parametrize(
    "nproc, parallel, match",
    [
        (0, "ddp", "--nproc 0: must be at least 1"),
        (-2, "none", "--nproc -2: must be at least 1"),
        (2, "none", "unsynchronised copies; use --set train.parallel=ddp"),
    ],
)
def test_check_nproc_refuses(nproc, parallel, match):
    with pytest.raises(ConfigError, match=match):
        check_nproc(_cfg(parallel), nproc, "run.yaml")


@pytest.mark.parametrize("nproc, parallel", [(1, "none"), (1, "ddp"), (2, "ddp"), (4, "fsdp")])
def test_check_nproc_accepts(nproc, parallel):
    check_nproc(_cfg(parallel), nproc)


def test_warmup_longer_than_run_is_refused(tmp_path):
    p = write_config(tmp_path / "r.yaml", tiny_run_config(tmp_path, tmp_path / "d", warmup_steps=50, max_steps=10))
    with pytest.raises(ConfigError, match=r"r\.yaml: train: warmup_steps 50 > max_steps 10"):
        load_run_config(p)


def test_default_warmup_shrinks_to_a_short_run(tmp_path):
    """`--set train.max_steps=5` on a config without warmup_steps keeps working (default 20 -> 5)."""
    cfg = RunConfig.model_validate({"name": "x", "model": {"preset": "tiny"}, "train": {"max_steps": 5}})
    assert cfg.train.warmup_steps == 5


@pytest.mark.parametrize(
    "args, match",
    [
        (["--nproc", "0"], "--nproc 0: must be at least 1"),
        (["--nproc", "2", "--set", "train.parallel=none"], "would train 2 unsynchronised copies"),
        (["--set", "train.warmup_steps=99"], "warmup_steps 99 > max_steps 8"),
    ],
)
def test_train_cli_one_line(tmp_path, args, match):
    """Nothing is started (no torchrun, no run dir): one line on stderr and exit 2."""
    p = write_config(tmp_path / "r.yaml", tiny_run_config(tmp_path, tmp_path / "d", parallel="ddp"))
    r = subprocess.run(mltrain_cmd("train", str(p), *args), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0] and str(p) in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()
