"""How a pipeline-parallel layout cuts the model: which layers each stage holds and which stages each pp
rank runs. Pure arithmetic plus one in-place cut, shared by the trainer and the fake-rank dry run so both
see the same stages."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

# Schedules that run more than one stage per pp rank ("virtual stages", looped: rank r holds r, r+pp, ...);
# the config's validation needs it too, so it is defined there.
from mltrain.config import STAGES_PER_RANK

if TYPE_CHECKING:
    from torch import nn

__all__ = ["STAGES_PER_RANK", "cut_to_stage", "rank_stage_ids", "split_words", "stage_layer_ranges"]


def stage_layer_ranges(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous layer ranges, one per stage. An uneven split gives the extra layers to the earliest
    stages, one each (10 layers on 4 stages: 3, 3, 2, 2): the last stage also carries the head and the
    loss, so it is the one left lighter."""
    if n_stages < 1 or n_layers < n_stages:
        raise ValueError(f"{n_layers} layers cannot be split into {n_stages} pipeline stages (each needs >= 1)")
    base, extra = divmod(n_layers, n_stages)
    ranges, start = [], 0
    for s in range(n_stages):
        size = base + (1 if s < extra else 0)
        ranges.append(range(start, start + size))
        start += size
    return ranges


def rank_stage_ids(pp_rank: int, pp: int, per_rank: int) -> list[int]:
    """The stage indices that pp rank `pp_rank` runs, in order (looped placement)."""
    return [pp_rank + k * pp for k in range(per_rank)]


def split_words(n_layers: int, pp: int, schedule: str) -> str:
    """'layers per stage 3/3/2/2' for logs and the dry run."""
    ranges = stage_layer_ranges(n_layers, pp * STAGES_PER_RANK[schedule])
    return "layers per stage " + "/".join(str(len(r)) for r in ranges)


def cut_to_stage(model: nn.Module, layers: Collection[int], *, first: bool, last: bool) -> nn.Module:
    """Keep only this stage's part of a whole Transformer, in place: its blocks (keys unchanged), the
    token embedding on the first stage, the final norm and head on the last. Returns the model. `layers`
    may also be the union of several stages' ranges (what one pp rank holds of the model)."""
    for i in model.layers.indices():
        if i not in layers:
            del model.layers[i]
    if not first:
        model.tok_embeddings = None
    if not last:
        model.norm = None
        model.output = None
    return model
