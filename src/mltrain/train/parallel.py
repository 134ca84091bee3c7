"""Parallelisms applied to a plain model in small composable steps (torchtitan's recipe):
compile each block, then wrap with DDP or shard with FSDP2 (`fully_shard` per block, then root)."""

from __future__ import annotations

import torch
from torch import nn

from mltrain.train.distributed import DistInfo


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward: trades ~1/3 more compute for memory."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for i, block in enumerate(model.layers):
        model.layers[i] = checkpoint_wrapper(block, preserve_rng_state=False)


def apply_compile(model: nn.Module) -> None:
    """Compile block by block in place (keeps state-dict keys; one graph reused by every layer)."""
    for block in model.layers:
        block.compile(fullgraph=True)


def apply_fsdp(model: nn.Module, param_dtype: torch.dtype, reduce_dtype: torch.dtype) -> None:
    """FSDP2: shard each block, then the root (embeddings, final norm, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    n = len(model.layers)
    for i, block in enumerate(model.layers):
        # The last block's params are needed again right away by the root: don't reshard them.
        fully_shard(block, mp_policy=mp, reshard_after_forward=i < n - 1)
    fully_shard(model, mp_policy=mp)


def parallelize(
    model: nn.Module, mode: str, info: DistInfo, bf16: bool, compile_blocks: bool, activation_checkpointing: bool
) -> nn.Module:
    """Return the module to train (DDP wraps; FSDP and compile act in place)."""
    if activation_checkpointing:
        apply_activation_checkpointing(model)
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
