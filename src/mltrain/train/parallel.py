"""Parallelisms applied to a plain model in small composable steps (torchtitan's recipe, in its order):
tensor + sequence parallel on each block, activation checkpointing, compile each block, then wrap with
DDP or shard with FSDP2 / HSDP (`fully_shard` per block, then root, on the data-parallel mesh)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from mltrain.train.distributed import DistInfo

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


# Ops whose outputs selective checkpointing keeps: the matmuls (every other one, see below), attention
# (its recompute costs the most per byte saved) and the tensor-parallel reductions (recomputing them would
# repeat a collective).
def _selective_save_ops() -> set[Any]:
    aten = torch.ops.aten
    ops = {
        aten.mm.default,
        aten.addmm.default,
        aten._scaled_dot_product_flash_attention.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_flash_attention_for_cpu.default,
    }
    if hasattr(aten, "_scaled_dot_product_cudnn_attention"):
        ops.add(aten._scaled_dot_product_cudnn_attention.default)
    if hasattr(torch.ops, "_c10d_functional"):
        ops.add(torch.ops._c10d_functional.reduce_scatter_tensor.default)
    return ops


def selective_context_fn() -> Any:
    """A `context_fn` for checkpoint_wrapper: per block, save the outputs of attention, of the TP
    reductions and of every other matmul; recompute the rest (norms, activations, RoPE, the other half of
    the matmuls) in backward. torch decides at forward time (the policy is not asked again in recompute)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    save = _selective_save_ops()
    matmuls = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default}

    def make() -> Any:
        seen = [0]  # matmuls so far in this block's forward

        def policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
            keep = op in save
            if op in matmuls:
                seen[0] += 1
                keep = seen[0] % 2 == 1
            return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    return make


def ac_mode(setting: bool | str) -> str:
    """train.activation_checkpointing as one word: none, full (true) or selective."""
    if setting is True:
        return "full"
    return setting or "none"


def apply_activation_checkpointing(model: nn.Module, mode: str = "full") -> None:
    """Recompute activations in backward, block by block: `full` recomputes the whole block (~1/3 more
    compute for the least memory); `selective` keeps the costly outputs (selective_context_fn)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    kw: dict[str, Any] = {"context_fn": selective_context_fn()} if mode == "selective" else {}
    for key, block in list(model.layers.items()):
        model.layers[key] = checkpoint_wrapper(block, preserve_rng_state=False, **kw)


def apply_compile(model: nn.Module) -> None:
    """Compile block by block in place (keeps state-dict keys; one graph reused by every layer)."""
    for block in model.layers:
        block.compile(fullgraph=True)


def apply_fsdp(
    model: nn.Module,
    param_dtype: torch.dtype,
    reduce_dtype: torch.dtype,
    mesh: DeviceMesh | None = None,
    pipelined: bool = False,
) -> None:
    """FSDP2: shard each block, then the root (embeddings, final norm, head). A 2-D `mesh`
    (dp_replicate, dp_shard) is HSDP: sharded within a replica, gradients all-reduced across replicas.
    A pipeline stage keeps its blocks gathered from forward to backward (`pipelined`): the schedule runs
    every micro batch's forward through them, and resharding would all-gather them again for each."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    n = len(model.layers)
    for i, block in enumerate(model.layers):
        # The last block's params are needed again right away by the root: don't reshard them.
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < n - 1 and not pipelined)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=not pipelined)


class TiedHead(nn.Module):
    """The vocabulary head of a tied model as a module, so tensor parallel can place its input and output:
    logits = h @ embedding.weight^T. It holds no parameter (the embedding is kept outside the module tree,
    so state-dict keys do not change)."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        object.__setattr__(self, "_embedding", embedding)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self._embedding.weight)


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh, loss_parallel: bool) -> None:
    """Tensor parallel on the projections and sequence parallel on the norms (Megatron's layout).

    Between blocks the residual stream is sharded over the sequence (Shard(1)); each norm runs on its
    slice; attention and the MLP all-gather it (Replicate) and split heads / hidden units column-wise,
    then reduce-scatter back to sequence slices row-wise. The embedding is split over the vocabulary.
    The head's logits come back whole, or vocab-sharded for loss_parallel (the loss then runs inside
    torch's loss_parallel() context)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        PrepareModuleInputOutput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    logits = Shard(-1) if loss_parallel else Replicate()
    plan: dict[str, Any] = {}  # a pipeline stage has the embedding only first, the norm and head only last
    if model.tok_embeddings is not None:
        plan["tok_embeddings"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if model.norm is not None:
        plan["norm"] = SequenceParallel()
    if model.output is not None:
        plan["output"] = ColwiseParallel(
            input_layouts=Shard(1), output_layouts=logits, use_local_output=not loss_parallel
        )
    if plan:
        parallelize_module(model, tp_mesh, plan)
    model.sequence_shards = tp_mesh.size()  # the hidden states between blocks hold T / tp positions
    if model.output is None and model.norm is not None:
        # Tied: the embedding's vocab-sharded weight (Shard(0)) is already the column split of the head.
        head = TiedHead(model.tok_embeddings)
        parallelize_module(
            head,
            tp_mesh,
            PrepareModuleInputOutput(
                input_layouts=(Shard(1),),
                desired_input_layouts=(Replicate(),),
                output_layouts=(Shard(-1),),
                desired_output_layouts=(logits,),
                use_local_output=not loss_parallel,
            ),
        )
        # the model calls self._head(h): an instance attribute in front of the method, kept out of the
        # module tree (no parameters of its own, nothing for FSDP or the state dict to see)
        object.__setattr__(model, "_head", head)
    for block in model.layers:
        plan = {
            "attention_norm": SequenceParallel(),
            # every positional input named: x (sequence-sharded), then cos, sin, cache (left alone)
            "attention": PrepareModuleInput(
                input_layouts=(Shard(1), None, None, None), desired_input_layouts=(Replicate(), None, None, None)
            ),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            "feed_forward.w3": ColwiseParallel(),
        }
        parallelize_module(block, tp_mesh, plan)


def repeat_kv_heads(model: nn.Module) -> None:
    """Attention repeats its KV heads instead of SDPA's enable_gqa: context parallel's ring attention
    is built (and torchtitan tests it) on plain multi-head SDPA calls."""
    for block in model.layers:
        block.attention.repeat_kv = True


def parallelize_mesh(
    model: nn.Module,
    mesh: DeviceMesh | None,
    info: DistInfo,
    *,
    bf16: bool,
    compile_blocks: bool,
    activation_checkpointing: bool | str,
    loss_parallel: bool,
    pipelined: bool = False,
) -> tuple[nn.Module, bool]:
    """Apply a `parallel:` layout on `mesh` (from train.mesh.build_mesh): TP + SP, activation
    checkpointing, per-block compile, then FSDP2/HSDP when dp_shard > 1, or DDP when only dp_replicate
    is. Returns the module to train and whether FSDP's mixed precision casts (else autocast does).
    `pipelined`: `model` is one pipeline stage (train.pipeline applies this to each)."""
    from mltrain.train.mesh import cp_mesh, dp_mesh, shards_parameters, tp_mesh

    if cp_mesh(mesh) is not None:
        repeat_kv_heads(model)
    tp = tp_mesh(mesh)
    if tp is not None:
        apply_tp(model, tp, loss_parallel)
    if activation_checkpointing:
        apply_activation_checkpointing(model, ac_mode(activation_checkpointing))
    if compile_blocks:
        apply_compile(model)
    dp = dp_mesh(mesh)
    if dp is None:  # one process, or tp alone: nothing to replicate or shard
        return model, False
    if shards_parameters(dp):
        param_dtype = torch.bfloat16 if bf16 else torch.float32
        apply_fsdp(model, param_dtype=param_dtype, reduce_dtype=torch.float32, mesh=dp, pipelined=pipelined)
        return model, True
    from torch.nn.parallel import DistributedDataParallel as DDP

    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    return DDP(model, device_ids=device_ids, process_group=dp.get_group()), False


def parallelize(
    model: nn.Module,
    mode: str,
    info: DistInfo,
    bf16: bool,
    compile_blocks: bool,
    activation_checkpointing: bool | str,
) -> nn.Module:
    """Return the module to train (DDP wraps; FSDP and compile act in place)."""
    if activation_checkpointing:
        apply_activation_checkpointing(model, ac_mode(activation_checkpointing))
    if compile_blocks:
        apply_compile(model)
    if mode == "fsdp" and info.world_size > 1:
        param_dtype = torch.bfloat16 if bf16 else torch.float32
        apply_fsdp(model, param_dtype=param_dtype, reduce_dtype=torch.float32)
        return model
    if mode == "ddp" and info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [info.local_rank] if info.device.type == "cuda" else None
        return DDP(model, device_ids=device_ids)
    return model
