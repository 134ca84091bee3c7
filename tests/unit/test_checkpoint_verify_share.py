"""Before a multi-rank resume the ranks split the hashing of a checkpoint's files: together they must hash
every file exactly once, or a damaged file in a share nobody took is resumed from."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import committed_checkpoint, flip_last_byte

from mltrain.train.checkpoint import check_checkpoint

FILES = [".metadata", "__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "rank_00000.pt", "rank_00001.pt", "x.json"]


def committed(ck: Path) -> Path:
    return committed_checkpoint(ck, FILES)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7, 9])
def test_the_ranks_shares_hash_every_file_exactly_once(tmp_path, world):
    ck = committed(tmp_path / "step_00000001")
    assert all(check_checkpoint(ck, share=(r, world)) is None for r in range(world))
    for rel in FILES:
        flip_last_byte(ck / rel)  # same size: only hashing finds it
        found = [r for r in range(world) if check_checkpoint(ck, share=(r, world))]
        assert len(found) == 1, f"{rel} hashed by ranks {found} of {world}"
        assert rel in check_checkpoint(ck, share=(found[0], world))
        assert check_checkpoint(ck, deep=False, share=(found[0], world)) is None
        flip_last_byte(ck / rel)


def test_sizes_are_checked_by_every_rank(tmp_path):
    ck = committed(tmp_path / "step_00000001")
    (ck / "x.json").write_bytes(b"short")
    assert all("x.json has 5 bytes" in (check_checkpoint(ck, share=(r, 3)) or "") for r in range(3))
