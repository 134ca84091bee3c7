"""Process-group setup from torchrun's environment: gloo on CPU, nccl on GPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from mltrain.errors import ConfigError

        raise ConfigError("train.device: cuda requested but no CUDA device is visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(requested_device: str, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, timeout=timedelta(seconds=timeout_s), device_id=device if device.type == "cuda" else None
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def all_reduce_mean(t: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Mean over the ranks of `group` (default: all; gloo has no AVG op, so SUM / size)."""
    if dist.is_initialized():
        dist.all_reduce(t, group=group)
        t = t / dist.get_world_size(group)
    return t


def full_value(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: a DTensor (a loss_parallel loss, a gradient norm over sharded parameters) reduced
    and gathered to its full value."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when `flag` is true on at least one. Without a device, the backend's
    (NCCL reduces only CUDA tensors)."""
    if not dist.is_initialized():
        return flag
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t)
    return bool(t.item())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
