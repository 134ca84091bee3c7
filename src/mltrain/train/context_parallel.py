"""Context parallel behind one small adapter: torch's CP API is experimental and has changed shape twice
in a year, so everything mltrain uses of it is here, and nowhere else.

Pinned: `torch.distributed.tensor.experimental.context_parallel(mesh, buffers=, buffer_seq_dims=,
no_restore_buffers=)` (a context manager that swaps F.scaled_dot_product_attention for the ring version
and shards the given tensors along their sequence dim in place, load-balanced head + tail for causal
masks) and `..._attention.set_rotate_method("allgather")`. Both exist in torch 2.7-2.13.

What it needs from the model: RoPE tables for the *whole* sequence passed in as tensors, so they are
sharded like the tokens (a rank holds chunks i and 2cp-1-i of the sequence, not a prefix). CUDA only:
the ring attention has sharding rules for the CUDA flash / efficient / cuDNN kernels; on CPU
config.resolve_parallel refuses cp > 1 before anything starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch.distributed.device_mesh import DeviceMesh


def cp_chunks(cp: int, rank: int) -> tuple[int, int]:
    """The two of 2 x cp equal sequence chunks that cp rank `rank` holds under head-tail load balancing:
    each rank gets one early (cheap under a causal mask) and one late (costly) chunk, so every rank does
    the same attention work."""
    if not 0 <= rank < cp:
        raise ValueError(f"cp rank {rank} outside 0..{cp - 1}")
    return rank, 2 * cp - 1 - rank


def local_positions(seq_len: int, cp: int, rank: int) -> list[int]:
    """The token positions (0-based) that cp rank `rank` computes: what its RoPE slice must cover."""
    if seq_len % (2 * cp):
        raise ValueError(f"seq_len {seq_len} is not divisible by 2 x cp = {2 * cp}")
    size = seq_len // (2 * cp)
    return [p for c in cp_chunks(cp, rank) for p in range(c * size, (c + 1) * size)]


@contextlib.contextmanager
def sequence_sharded(
    cp_mesh: DeviceMesh, tensors: list[torch.Tensor], seq_dims: list[int]
) -> Iterator[list[torch.Tensor]]:
    """Within: SDPA is ring attention over `cp_mesh`, and each of `tensors` (inputs, labels, RoPE cos and
    sin) holds only this rank's load-balanced sequence chunks (sharded in place, not restored after:
    the step is over by then). Yields the same list for readability at the call site."""
    from torch.distributed.tensor.experimental import context_parallel
    from torch.distributed.tensor.experimental._attention import set_rotate_method

    set_rotate_method("allgather")  # alltoall is not supported by every attention backend
    with context_parallel(cp_mesh, buffers=tensors, buffer_seq_dims=seq_dims, no_restore_buffers=set(tensors)):
        yield tensors
