"""Pipeline parallel with torch.distributed.pipelining: the model cut into stages, the stages placed looped
over the pp ranks, each stage parallelized like a whole model (TP + SP, activation checkpointing, compile,
FSDP2 / HSDP / DDP on the data-parallel mesh), and one of torch's schedules running micro batches through.

A pp rank keeps one module of its own: the whole model cut to the layers of its stages (its state-dict keys
are the whole model's, so checkpoints reshard between any two layouts). Each stage is a second, thin
Transformer that shares that module's blocks, embedding, norm and head, so the optimizer, the checkpoint
and the parameter list see one module per rank while the schedule runs the stages.

The step loss is the trainer's: per local batch the mean cross-entropy over its tokens, divided by the
grad-accumulation steps. Each pipeline micro batch contributes its summed cross-entropy divided by the
whole local batch's token count (and the accumulation steps), and the schedule does not rescale
gradients, so the micro batches add up to exactly that mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mltrain.config import ParallelConfig
from mltrain.train.distributed import DistInfo, full_value
from mltrain.train.stages import STAGES_PER_RANK, cut_to_stage, rank_stage_ids, stage_layer_ranges

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


def stage_view(model: nn.Module, layers: range, *, first: bool, last: bool) -> nn.Module:
    """A stage of `model` that shares its submodules: the model's class built on the meta device, cut to
    the stage (train.stages.cut_to_stage), then every submodule it kept replaced by `model`'s own."""
    with torch.device("meta"):
        part = type(model)(model.cfg)
    cut_to_stage(part, layers, first=first, last=last)
    for name, _ in list(part.named_children()):
        if name == "layers":
            for i in part.layers.indices():
                part.layers[i] = model.layers[i]
        else:
            setattr(part, name, getattr(model, name))
    return part


def cross_entropy_share(logits: torch.Tensor, targets: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """A micro batch's summed cross-entropy over `denominator` (the local batch's tokens x accumulation
    steps): the schedule's loss_fn. Vocab-sharded logits (loss_parallel) need torch's loss_parallel()."""
    from mltrain.model.transformer import IGNORE_INDEX

    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return ce / denominator


@dataclass
class Pipeline:
    """This pp rank's stages and the schedule that runs them."""

    schedule: Any
    stages: list[Any]
    group: dist.ProcessGroup
    has_first: bool
    has_last: bool
    group_names: list[list[str]]  # the whole model's parameter names per optimizer group (optim.group_names)

    def _run(self, run: Any, x: torch.Tensor, y: torch.Tensor, accum: int, **kw: Any) -> torch.Tensor:
        """Run one local batch through the schedule; returns its loss on every rank of the pp group (the
        last stage computes it, the others learn it by a sum over the group)."""
        from mltrain.model.transformer import IGNORE_INDEX

        losses: list[torch.Tensor] | None = [] if self.has_last else None
        denominator = (y != IGNORE_INDEX).sum() * accum
        args = (x,) if self.has_first else ()
        run(*args, target=y, losses=losses, loss_kwargs={"denominator": denominator}, **kw)
        total = torch.zeros((), dtype=torch.float32, device=y.device)
        for loss in losses or []:
            total += full_value(loss.detach()).to(total.device)
        dist.all_reduce(total, group=self.group)
        return total

    def step(self, x: torch.Tensor, y: torch.Tensor, accum: int) -> torch.Tensor:
        """Forward and backward of one local batch (gradients accumulate); its loss / accum."""
        return self._run(self.schedule.step, x, y, accum, return_outputs=False)

    @torch.no_grad()
    def eval(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward only: the local batch's mean cross-entropy."""
        return self._run(self.schedule.eval, x, y, 1)

    def name_every_param(self, optim_state: dict[str, Any]) -> None:
        """Name every parameter of the whole model in the optimizer state's param groups, in place.

        This rank's optimizer holds only its stages' parameters, but DCP writes one copy of the groups
        (hyperparameters and parameter names) for all ranks, and a load maps each rank's parameters to
        their group by name: the saved groups must name them all, as a one-process run's do."""
        for group, whole in zip(optim_state["param_groups"], self.group_names, strict=True):
            group["params"] = list(whole)


def _schedule(name: str, stages: list[Any], microbatches: int) -> Any:
    from torch.distributed.pipelining import schedules

    cls = {
        "1F1B": schedules.Schedule1F1B,
        "GPipe": schedules.ScheduleGPipe,
        "Interleaved1F1B": schedules.ScheduleInterleaved1F1B,
    }[name]
    single = STAGES_PER_RANK[name] == 1
    # scale_grads=False: the loss already divides by the whole local batch's tokens (see the module doc)
    return cls(
        stages[0] if single else stages, n_microbatches=microbatches, loss_fn=cross_entropy_share, scale_grads=False
    )


def build_pipeline(
    model: nn.Module, mesh: DeviceMesh, layout: ParallelConfig, info: DistInfo, **parallelize: Any
) -> tuple[nn.Module, Pipeline, bool]:
    """Cut `model` (whole, initialised) into this pp rank's stages, parallelize each stage on `mesh` with
    parallel.parallelize_mesh(**parallelize), and build the schedule. `model` is cut in place to what this
    rank holds and returned as the module to optimize and checkpoint; also the Pipeline, and whether FSDP's
    mixed precision casts."""
    from torch.distributed.pipelining import PipelineStage

    from mltrain.train.optim import group_names
    from mltrain.train.parallel import parallelize_mesh

    names = group_names(model)  # before the cut: the whole model's
    pp_mesh = mesh["pp"]
    n = layout.n_stages()
    ranges = stage_layer_ranges(len(model.layers), n)
    ids = rank_stage_ids(pp_mesh.get_local_rank(), layout.pp, STAGES_PER_RANK[layout.pp_schedule])
    parts = [stage_view(model, ranges[s], first=s == 0, last=s == n - 1) for s in ids]
    cut_to_stage(model, {i for s in ids for i in ranges[s]}, first=0 in ids, last=n - 1 in ids)
    stages, fsdp = [], False
    for s, part in zip(ids, parts, strict=True):
        module, fsdp = parallelize_mesh(part, mesh, info, pipelined=True, **parallelize)
        stages.append(PipelineStage(module, s, n, info.device, group=pp_mesh.get_group()))
    pipe = Pipeline(
        schedule=_schedule(layout.pp_schedule, stages, layout.microbatches()),
        stages=stages,
        group=pp_mesh.get_group(),
        has_first=0 in ids,
        has_last=n - 1 in ids,
        group_names=names,
    )
    return model, pipe, fsdp


def clip_grad_norm(params: list[torch.Tensor], max_norm: float, group: dist.ProcessGroup) -> torch.Tensor:
    """The gradient norm over the whole model, clipped to `max_norm` when > 0: each rank's norm over its
    stages (reduced over tp / dp shards by DTensor), then the sum of squares over the pp group."""
    grads = [p.grad for p in params if p.grad is not None]
    norm = full_value(torch.nn.utils.get_total_norm(grads))
    square = norm**2
    dist.all_reduce(square, group=group)
    norm = square.sqrt()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
