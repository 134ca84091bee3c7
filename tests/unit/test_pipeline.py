"""Pipeline stages on one process: stages chained equal the whole model (logits, the step loss made of
micro-batch shares, gradients), they share the model's parameters, a later stage builds RoPE for the whole
sequence, and the optimizer groups are named as a one-process checkpoint names them."""

from __future__ import annotations

import torch

from mltrain.config import ModelConfig, TrainConfig
from mltrain.model.transformer import IGNORE_INDEX, Transformer
from mltrain.train.optim import build_optimizer, group_names
from mltrain.train.pipeline import cross_entropy_share, stage_view
from mltrain.train.stages import stage_layer_ranges

CFG = ModelConfig(
    vocab_size=61, hidden_size=32, n_layers=5, n_heads=4, n_kv_heads=2, ffn_hidden_size=48, tie_embeddings=False
)


def model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(CFG)


def stages_of(m: Transformer, n: int) -> list[torch.nn.Module]:
    ranges = stage_layer_ranges(CFG.n_layers, n)
    return [stage_view(m, r, first=s == 0, last=s == n - 1) for s, r in enumerate(ranges)]


def test_stages_chained_equal_the_whole_model():
    m = model()
    x = torch.randint(0, 61, (4, 12))
    parts = stages_of(m, 3)  # 2/2/1 layers
    assert [p.layers.indices() for p in parts] == [[0, 1], [2, 3], [4]]
    assert parts[0].tok_embeddings is m.tok_embeddings and parts[0].norm is None
    assert parts[1].tok_embeddings is None and parts[1].output is None
    assert parts[2].output is m.output and parts[2].layers[4] is m.layers[4]
    h = x
    for p in parts:
        h = p(h)
    torch.testing.assert_close(h, m(x), rtol=0, atol=0)


def test_micro_batch_shares_add_up_to_the_step_loss_and_its_gradients():
    """The schedule's loss_fn: each micro batch's summed cross-entropy over the whole local batch's token
    count x grad_accum; the shares add up to the trainer's loss / accum, with the same gradients."""
    x = torch.randint(0, 61, (4, 12))
    y = torch.randint(0, 61, (4, 12))
    y[0, :5] = IGNORE_INDEX  # the mean is over the tokens that count, in the whole batch
    whole = model()
    want = whole(x, y) / 2
    want.backward()
    piped = model()
    parts = stages_of(piped, 2)
    denominator = (y != IGNORE_INDEX).sum() * 2
    total = torch.zeros(())
    for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True):  # two pipeline micro batches
        share = cross_entropy_share(parts[1](parts[0](xs)), ys, denominator)
        share.backward()
        total += share.detach()
    torch.testing.assert_close(total, want.detach(), rtol=1e-6, atol=0)
    for (name, p), q in zip(whole.named_parameters(), piped.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_a_later_stage_builds_rope_for_the_whole_sequence():
    """Under sequence parallel a stage's input holds T / tp positions; RoPE must still cover 0..T-1."""
    part = stages_of(model(), 2)[1]
    lengths = []
    part.rope.register_forward_hook(lambda mod, args, out: lengths.append(args[0]))
    part(torch.randn(2, 8, CFG.hidden_size))
    part.sequence_shards = 2
    part.layers = type(part.layers)()  # no blocks: only the positions are checked here
    part(torch.randn(2, 8, CFG.hidden_size))
    assert lengths == [8, 16]


def test_group_names_are_the_one_process_checkpoint_groups():
    from torch.distributed.checkpoint.state_dict import get_state_dict

    m = model()
    _, optim_sd = get_state_dict(m, build_optimizer(m, TrainConfig(), torch.device("cpu")))
    assert [g["params"] for g in optim_sd["param_groups"]] == group_names(m)
    assert "layers.4.attention.wq.weight" in group_names(m)[0] and "norm.weight" in group_names(m)[1]
