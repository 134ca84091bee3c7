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


def test_fsdp_shards_over_dp_shard_and_cp_together(tmp_path):
    """The cp ranks of a group hold the same parameters: FSDP shards them over dp_shard x cp (one flattened
    axis), so dp_shard 2 x cp 2 x tp 2 on 8 ranks holds exactly dp_shard 4 x tp 2's shards. Built on the
    fake process group (the dry run), since context parallel itself needs CUDA."""
    import torch.distributed as dist
    from tests.helpers import write_config

    from mltrain.config import load_run_config
    from mltrain.train.dry_run import dry_run_ranks

    model = {"vocab_size": 1000, "hidden_size": 36, "n_layers": 2, "n_heads": 6, "n_kv_heads": 2}
    base = {"name": "cp", "model": {**model, "ffn_hidden_size": 100, "max_seq_len": 64}}
    base["train"] = {"seq_len": 32, "micro_batch_size": 2}

    def shapes(parallel: dict) -> dict:
        path = write_config(tmp_path / "cp.yaml", {**base, "parallel": parallel})
        (kind,) = dry_run_ranks(load_run_config(path), 8).kinds
        assert not dist.is_initialized()
        return kind.shapes

    with_cp = shapes({"dp_shard": 2, "cp": 2, "tp": 2})
    assert with_cp == shapes({"dp_shard": 4, "tp": 2})
    assert with_cp["layers.0.feed_forward.w1.weight"] == (13, 36)  # 100 / tp 2 = 50 rows, over 4 = 13
