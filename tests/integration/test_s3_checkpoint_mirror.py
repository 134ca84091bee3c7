"""Checkpoint mirror on moto's S3 server: train, lose the whole run dir (a new cluster), train again:
the newest complete remote checkpoint comes back and the losses continue step for step."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.storage.url import parse_s3_url
from mltrain.train.metrics import read_metrics
from mltrain.train.mirror import remote_checkpoints

pytestmark = pytest.mark.slow


def train(cfg_path, env) -> subprocess.CompletedProcess:
    """2 torchrun workers on gloo: rank 0 restores and mirrors, rank 1 waits for its verdict, and the
    workers' os._exit must not cut the last upload short."""
    env = {k: v for k, v in env.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT")}
    cmd = mltrain_cmd("train", str(cfg_path), "--nproc", "2")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def test_wiped_run_resumes_from_s3_with_identical_losses(tmp_path, tiny_data_dir, s3_env, s3, bucket):
    mirror = f"s3://{bucket}/checkpoints/mir"
    cfg = tiny_run_config(tmp_path, tiny_data_dir, "mir", parallel="ddp")
    cfg["checkpoint"] = {"every_steps": 3, "keep_last": 2, "mirror": mirror}
    cfg_path = write_config(tmp_path / "mir.yaml", cfg)
    run_dir = tmp_path / "runs" / "mir"

    r1 = train(cfg_path, s3_env)
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    ref = losses(run_dir)
    assert sorted(ref) == list(range(1, 9))
    url = parse_s3_url(mirror)
    remote = remote_checkpoints(s3, url)
    complete = [step for step, _, ok in remote if ok]
    assert len(complete) == 2 and complete[-1] == 8, (remote, r1.stdout[-3000:])  # keep_last applies remotely too
    assert not list((run_dir / ".mirror-staging").glob("*")) if (run_dir / ".mirror-staging").exists() else True
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")

    # the upload of step 8 "died" before its marker: that copy is incomplete and must not be used
    s3.delete_object(Bucket=bucket, Key="checkpoints/mir/step_00000008/COMMITTED")
    restored = complete[0]
    shutil.rmtree(run_dir)  # a new cluster: nothing local

    r2 = train(cfg_path, s3_env)
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert f"restored step_{restored:08d}" in r2.stdout, r2.stdout[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{restored:08d}'} (step {restored})" in r2.stdout
    got = losses(run_dir)
    assert sorted(got) == list(range(restored + 1, 9))
    for step in range(restored + 1, 9):
        assert got[step] == ref[step], f"step {step}: after restore {got[step]!r} != original {ref[step]!r}"
    after = remote_checkpoints(s3, url)
    assert [s for s, _, ok in after if ok][-1] == 8  # mirrored again by the second run


def test_unreachable_mirror_fails_the_start_instead_of_training_from_scratch(tmp_path, s3_env, bucket, monkeypatch):
    """Starting at step 0 because S3 was unreachable would later prune the good remote checkpoints."""
    from mltrain.config import CheckpointConfig
    from mltrain.errors import CheckpointError
    from mltrain.train.checkpoint import CheckpointManager
    from mltrain.train.mirror import attach_checkpoint_mirror

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    manager = CheckpointManager(tmp_path / "run", keep_last=2, rank=0, world_size=1)
    with pytest.raises(CheckpointError, match="checkpoint.mirror: cannot restore from .*cannot reach the S3 endpoint"):
        attach_checkpoint_mirror(manager, CheckpointConfig(mirror=f"s3://{bucket}/c"))
    assert not (tmp_path / "run" / "checkpoints").exists()
