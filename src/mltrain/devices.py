"""Whether this machine has a GPU at all, answered without importing torch.

`train.device: auto` and the local launcher's "one process per GPU" ask torch how many GPUs there are;
importing torch for that costs ~1.4 s of CPU in a process that otherwise never needs it (the parent of
`mltrain train --nproc N`). Where no GPU driver is present, torch's answer is known: none."""

from __future__ import annotations

import os
from pathlib import Path

# what a GPU torch can use leaves behind: the NVIDIA driver (also inside containers given GPUs), ROCm's device
_GPU_TRACES = ("proc/driver/nvidia", "dev/nvidiactl", "dev/kfd")


def no_gpu_here(root: Path = Path("/")) -> bool:
    """True when torch would certainly find no GPU here: no driver of one, or CUDA_VISIBLE_DEVICES hides
    them all. False means "ask torch" (there may be GPUs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return True
    return not any((root / trace).exists() for trace in _GPU_TRACES)
