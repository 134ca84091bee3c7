"""The pipeline cut: layer ranges per stage, stages per rank, and a stage that keeps its state-dict keys."""

from __future__ import annotations

import pytest
import torch

from mltrain.config import ModelConfig
from mltrain.model.transformer import Transformer
from mltrain.train.stages import cut_to_stage, rank_stage_ids, split_words, stage_layer_ranges


def test_even_and_uneven_splits():
    assert stage_layer_ranges(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    # the extra layers go to the earliest stages; the last (head + loss) is left lighter
    assert [len(r) for r in stage_layer_ranges(10, 4)] == [3, 3, 2, 2]
    assert [len(r) for r in stage_layer_ranges(126, 16)] == [8] * 14 + [7] * 2
    assert split_words(10, 2, "Interleaved1F1B") == "layers per stage 3/3/2/2"
    with pytest.raises(ValueError, match="3 layers cannot be split into 4 pipeline stages"):
        stage_layer_ranges(3, 4)


def test_looped_placement():
    assert rank_stage_ids(1, 4, 1) == [1]
    assert rank_stage_ids(1, 4, 2) == [1, 5]


def test_a_stage_keeps_the_whole_model_keys():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden_size=64)
    whole = Transformer(cfg).state_dict()
    torch.manual_seed(0)
    middle = cut_to_stage(Transformer(cfg), range(1, 3), first=False, last=False)
    assert middle.layers.indices() == [1, 2]
    keys = set(middle.state_dict())
    assert keys and keys <= set(whole)
    assert all(k.startswith(("layers.1.", "layers.2.")) for k in keys)
    last = cut_to_stage(Transformer(cfg), range(3, 4), first=False, last=True)
    assert {k.split(".")[0] for k in last.state_dict()} == {"layers", "norm", "output"}
    assert last.layers[3] is list(last.layers)[0]  # indexed by the whole model's layer number
