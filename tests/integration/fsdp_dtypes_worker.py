"""torchrun worker for test_fsdp_bf16_dtypes: one real trainer step under FSDP2 with every all-gather
and reduce-scatter FSDP issues recorded, so the test sees the dtypes that actually travel.

    python -m torch.distributed.run --nproc-per-node 2 fsdp_dtypes_worker.py RUN.yaml OUT.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mltrain.config import load_run_config
from mltrain.train.distributed import init_distributed
from mltrain.train.trainer import Trainer

seen: dict[str, set[str]] = {"all_gather": set(), "reduce_scatter": set(), "forward_weight": set()}


def _recording(name: str, fn):
    def wrapper(*args, **kwargs):
        tensor = kwargs.get("input", args[1] if len(args) > 1 else None)
        if isinstance(tensor, torch.Tensor):
            seen[name].add(str(tensor.dtype))
        return fn(*args, **kwargs)

    return wrapper


def main() -> None:
    cfg = load_run_config(Path(sys.argv[1]), [])
    info = init_distributed(cfg.train.device)
    dist.all_gather_single = _recording("all_gather", dist.all_gather_single)
    dist.reduce_scatter_single = _recording("reduce_scatter", dist.reduce_scatter_single)
    trainer = Trainer(cfg, info)
    target = next(m for m in trainer.model.layers[0].modules() if isinstance(m, torch.nn.Linear))
    target.register_forward_pre_hook(lambda m, a: seen["forward_weight"].add(str(m.weight.dtype)))
    trainer.train_step()
    out = {k: sorted(v) for k, v in seen.items()}
    out["sharded_param"] = sorted({str(p.dtype) for p in trainer.model.parameters()})
    out["optimizer_state"] = sorted(
        {str(v.dtype) for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step"}
    )
    out["fsdp_active"] = trainer.fsdp_active
    if info.rank == 0:
        Path(sys.argv[2]).write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
