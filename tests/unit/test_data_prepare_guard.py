"""`data prepare` refuses to rewrite a data dir that a run reads: always while a run holds a live lease
on it, and (unless --force) when the data would change under runs that have checkpoints from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mltrain.config import RunConfig
from mltrain.data.prepare import prepare_data
from mltrain.errors import DataError
from mltrain.lease import acquire_lease


def prep_config(base: Path, data_dir: Path, **data) -> RunConfig:
    """The same recipe as the tiny_data_dir fixture (so re-preparing it changes nothing)."""
    return RunConfig.model_validate(
        {
            "name": "prep",
            "base_dir": str(base),
            "model": {"preset": "tiny"},
            "data": {
                "sources": ["builtin:python-stdlib"],
                "dir": str(data_dir),
                "max_source_bytes": 300_000,
                "bpe_vocab_size": 1024,
                "shard_tokens": 40_000,
                "val_fraction": 0.05,
                **data,
            },
        }
    )


def snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture
def data_copy(tmp_path, tiny_data_dir) -> Path:
    d = tmp_path / "data"
    shutil.copytree(tiny_data_dir, d)
    return d


def test_refuses_while_a_run_holds_a_lease_on_it(tmp_path, data_copy):
    held = acquire_lease(tmp_path / "runs" / "live", data_dir=data_copy)
    before = snapshot(data_copy)
    try:
        with pytest.raises(DataError, match=r"is in use by the training run .*runs/live \(host .* pid \d+"):
            prepare_data(prep_config(tmp_path, data_copy, shard_tokens=9_000), force=True)
    finally:
        held.release()
    assert snapshot(data_copy) == before


def test_refuses_a_change_under_a_finished_run_unless_forced(tmp_path, data_copy):
    run = tmp_path / "runs" / "old"
    (run / "checkpoints" / "step_00000003").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "old", "data": {"dir": str(data_copy)}}))
    before = snapshot(data_copy)
    with pytest.raises(DataError, match=r"would change the data \(shard_tokens differ\) that the run\(s\) old"):
        prepare_data(prep_config(tmp_path, data_copy, shard_tokens=9_000))
    assert snapshot(data_copy) == before

    prepare_data(prep_config(tmp_path, data_copy))  # same recipe: the same data, allowed
    assert snapshot(data_copy).keys() == before.keys()
    prepare_data(prep_config(tmp_path, data_copy, shard_tokens=9_000), force=True)
    assert snapshot(data_copy) != before
