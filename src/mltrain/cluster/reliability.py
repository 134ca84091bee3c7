"""Failures at fleet scale and the checkpoint interval that costs the least: the mean time between failures
from a per-GPU-hour rate, Young's and Daly's optimum intervals, and the goodput they leave."""

from __future__ import annotations

import math

from pydantic import Field

from mltrain.config import StrictModel

# Llama 3 405B pre-training (Meta, "The Llama 3 Herd of Models", 2024, section 3.3.4): 419 unexpected
# interruptions in a 54-day snapshot on 16,384 H100 GPUs.
LLAMA3_INTERRUPTIONS = 419
LLAMA3_DAYS = 54
LLAMA3_GPUS = 16384
DEFAULT_RATE_PER_GPU_HOUR = LLAMA3_INTERRUPTIONS / (LLAMA3_DAYS * 24 * LLAMA3_GPUS)


class Failures(StrictModel):
    """`failures:` of a fleet: how often things break and what each recovery costs."""

    rate_per_gpu_hour: float = Field(
        default=DEFAULT_RATE_PER_GPU_HOUR, ge=0, description="unexpected interruptions per GPU-hour (Llama 3's)"
    )
    in_place_fraction: float = Field(
        default=0.5, ge=0, le=1, description="share of failures torchrun restarts in place (no node lost)"
    )
    in_place_restart_s: float = Field(default=300, ge=0, description="failure to training again, in place")
    requeue_s: float = Field(default=900, ge=0, description="failure to training again after a Slurm requeue")
    node_replace_s: float = Field(
        default=3600, ge=0, description="a lost node with no spare: waiting for a replacement instance"
    )
    spare_nodes: int = Field(default=0, ge=0, description="idle nodes kept to replace a lost one at once")
    checkpoint_save_s: float | None = Field(
        default=None, gt=0, description="seconds a save blocks training; default: measured, else 60"
    )
    checkpoint_interval_min: float | None = Field(
        default=None, gt=0, description="the interval to plan with; default: Daly's optimum"
    )


def mtbf_hours(rate_per_gpu_hour: float, gpus: int) -> float:
    """Mean time between failures of a job on `gpus` GPUs, failures independent per GPU; inf at rate 0."""
    rate = rate_per_gpu_hour * gpus
    return math.inf if rate <= 0 else 1.0 / rate


def young_interval(save: float, mtbf: float) -> float:
    """Young (1974): sqrt(2 C M), compute time between checkpoints; any consistent unit."""
    return math.sqrt(2.0 * save * mtbf)


def daly_interval(save: float, mtbf: float) -> float:
    """Daly (2006), the higher-order optimum: sqrt(2CM)[1 + sqrt(C/2M)/3 + (C/2M)/9] - C for C < 2M, else M."""
    if save >= 2.0 * mtbf:
        return mtbf
    x = save / (2.0 * mtbf)
    return math.sqrt(2.0 * save * mtbf) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - save


def checkpoint_interval_command(*args: object, **kwargs: object) -> None:
    """`mltrain plan checkpoint-interval` (filled in with the plan's goodput)."""
    raise NotImplementedError
