"""The checkpoint mirror's upload and restore on moto's S3 server, without training: a committed checkpoint
directory (files + COMMITTED marker, as the trainer writes them) goes up and comes back byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from mltrain.storage.url import parse_s3_url
from mltrain.train.checkpoint import MARKER, check_checkpoint, hash_files
from mltrain.train.mirror import CheckpointMirror, remote_checkpoints, restore_latest


def committed_checkpoint(run_dir: Path, step: int, files: dict[str, bytes]) -> Path:
    ck = run_dir / "checkpoints" / f"step_{step:08d}"
    for rel, data in files.items():
        (ck / rel).parent.mkdir(parents=True, exist_ok=True)
        (ck / rel).write_bytes(data)
    entries = hash_files(ck, sorted(files))
    (ck / MARKER).write_text(json.dumps({"files": entries, "step": step}))
    assert check_checkpoint(ck) is None
    return ck


def test_mirrored_checkpoint_restores_with_its_marker_and_leaves_no_restore_dirs(tmp_path, s3_env, s3, bucket):
    url = f"s3://{bucket}/mir/run"
    files = {"__0_0.distcp": b"w" * 3000, ".metadata": b"m" * 100, "trainer_state.json": b"{}"}
    src_run = tmp_path / "a"
    mirror = CheckpointMirror(url, src_run, keep_last=2, warn=lambda m: None, info=lambda m: None)
    mirror.committed(committed_checkpoint(src_run, 5, files))
    mirror.wait()
    assert mirror.uploaded == [5]
    assert remote_checkpoints(s3, parse_s3_url(url)) == [(5, "step_00000005", True)]

    new_run = tmp_path / "b"
    leftover = new_run / "checkpoints" / "step_00000003.restore"  # a restore killed before a newer step existed
    leftover.mkdir(parents=True)
    (leftover / "x").write_bytes(b"partial")
    assert restore_latest(url, new_run, warn=lambda m: None, info=lambda m: None) == 5
    ck = new_run / "checkpoints" / "step_00000005"
    assert check_checkpoint(ck) is None
    assert sorted(p.name for p in ck.iterdir()) == sorted([*files, MARKER])
    assert all((ck / rel).read_bytes() == data for rel, data in files.items())
    assert sorted(p.name for p in (new_run / "checkpoints").iterdir()) == ["step_00000005"]


def _attach(run_dir: Path, mirror: str) -> None:
    """The trainer's call on rank 0 of a one-process run (no process group), with the attributes it reads."""
    from types import SimpleNamespace

    from mltrain.train.mirror import attach_checkpoint_mirror

    manager = SimpleNamespace(
        rank=0, root=run_dir / "checkpoints", keep_last=2, warn=lambda m: None, info=lambda m: None, on_commit=None
    )
    attach_checkpoint_mirror(manager, SimpleNamespace(mirror=mirror, resume=True))


def test_a_mirror_with_a_bad_endpoint_or_bucket_stops_the_run_with_one_line(tmp_path, s3_env, monkeypatch):
    import pytest

    from mltrain.errors import CheckpointError

    run = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"^checkpoint.mirror: cannot .*'Bad_Bucket!' is not a valid bucket name"):
        _attach(run, "s3://Bad_Bucket!/x")
    committed_checkpoint(run, 1, {"a": b"a"})  # a local checkpoint: nothing to restore, the mirror still checked
    with pytest.raises(CheckpointError, match=r"'Bad_Bucket!' is not a valid bucket name"):
        _attach(run, "s3://Bad_Bucket!/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "notaurl")
    with pytest.raises(CheckpointError, match=r"'notaurl' is not an endpoint URL"):
        _attach(tmp_path / "empty", "s3://some-bucket/x")
