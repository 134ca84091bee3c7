"""The context-parallel adapter's arithmetic (which positions a cp rank holds), and its refusal on CPU.
The ring attention itself runs only on CUDA kernels, so its numerics are checked by bench/layouts.py on
a GPU, not here."""

from __future__ import annotations

import pytest

from mltrain.train.context_parallel import cp_chunks, local_positions


def test_each_rank_holds_one_early_and_one_late_chunk():
    assert [cp_chunks(4, r) for r in range(4)] == [(0, 7), (1, 6), (2, 5), (3, 4)]
    assert local_positions(16, 2, 0) == [0, 1, 2, 3, 12, 13, 14, 15]
    assert local_positions(16, 2, 1) == [4, 5, 6, 7, 8, 9, 10, 11]
    # every position exactly once over the ranks; causal work (sum of positions + 1) equal per rank
    held = [local_positions(64, 4, r) for r in range(4)]
    assert sorted(p for h in held for p in h) == list(range(64))
    assert len({sum(p + 1 for p in h) for h in held}) == 1


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="not divisible by 2 x cp = 8"):
        local_positions(20, 4, 0)
    with pytest.raises(ValueError, match="outside 0..3"):
        cp_chunks(4, 4)
