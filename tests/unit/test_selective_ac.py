"""Activation checkpointing modes on one process: `selective` and `full` train the same numbers as none,
and recompute in backward what they say (counted matmuls): full every one backward needs, selective only
the 3 of a block's 7 it did not keep. A selective policy that kept everything, or nothing, fails the count."""

from __future__ import annotations

import pytest
import torch

from mltrain.config import ModelConfig, RunConfig
from mltrain.model.transformer import Transformer
from mltrain.train.parallel import ac_mode, apply_activation_checkpointing

CFG = ModelConfig(vocab_size=96, hidden_size=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden_size=128)


def step(mode: str) -> tuple[float, dict[str, torch.Tensor], int]:
    """(loss, grads, matmuls run in backward) of one forward/backward of a fixed model and batch."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountMatmuls(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                CountMatmuls.n += 1
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = Transformer(CFG)
    if mode != "none":
        apply_activation_checkpointing(model, mode)
    ids = torch.randint(0, CFG.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    loss = model(ids[:, :-1], ids[:, 1:])
    with CountMatmuls():
        loss.backward()
    grads = {k.replace("_checkpoint_wrapped_module.", ""): p.grad for k, p in model.named_parameters()}
    return loss.item(), grads, CountMatmuls.n


def test_modes_train_the_same_numbers_and_recompute_what_they_say():
    loss0, grads0, mm0 = step("none")
    mms = {}
    for mode in ("selective", "full"):
        loss, grads, mms[mode] = step(mode)
        assert loss == pytest.approx(loss0, rel=1e-6), mode
        assert grads.keys() == grads0.keys()
        for k, g in grads.items():
            torch.testing.assert_close(g, grads0[k], rtol=1e-5, atol=1e-7, msg=f"{mode}: {k}")
    # each block has 7 matmuls (q, k, v, o, w1, w3, w2). full recomputes 6: backward needs no output of the
    # last (w2), and torch stops the recompute once it has what backward needs. selective recomputes the 3
    # of the 7 it did not keep (the 2nd, 4th, 6th).
    assert mms["full"] - mm0 == 6 * CFG.n_layers
    assert mms["selective"] - mm0 == 3 * CFG.n_layers


def test_setting_words():
    assert [ac_mode(v) for v in (False, True, "full", "selective")] == ["none", "full", "full", "selective"]
    base = {"name": "x", "model": {"preset": "tiny"}}
    tc = RunConfig.model_validate({**base, "train": {"activation_checkpointing": "selective"}}).train
    assert tc.activation_checkpointing == "selective"
    with pytest.raises(ValueError, match="activation_checkpointing"):
        RunConfig.model_validate({**base, "train": {"activation_checkpointing": "some"}})
