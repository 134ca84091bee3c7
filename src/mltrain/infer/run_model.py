"""A run's checkpointed model and tokenizer, loaded for inference (eval, sample) in one process."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mltrain.config import RunConfig
from mltrain.errors import DataError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from mltrain.model.transformer import Transformer


@dataclass
class RunModel:
    cfg: RunConfig
    model: Transformer
    tokenizer: Tokenizer
    eos_id: int
    step: int
    checkpoint: str  # its directory, or its s3:// URL (checkpoint.storage)
    device: torch.device


def load_run_model(run_dir: Path, step: int | None = None, device: str = "auto") -> RunModel:
    """Config, weights (fp32, eval mode) and the data dir's tokenizer of a run, on `device`."""
    from mltrain.config import load_run_config
    from mltrain.data.manifest import load_manifest
    from mltrain.data.tokenizer import load_tokenizer
    from mltrain.model.transformer import Transformer
    from mltrain.train.distributed import pick_device
    from mltrain.train.run_weights import load_run_weights

    cfg = load_run_config(Path(run_dir) / "config.yaml")
    data_dir = Path(cfg.data.dir)
    tok = load_tokenizer(data_dir)
    manifest = load_manifest(data_dir)
    if tok.get_vocab_size(with_added_tokens=True) > cfg.model.vocab_size:
        raise DataError(f"{data_dir}/tokenizer.json: more tokens than model.vocab_size {cfg.model.vocab_size}")
    model = Transformer(cfg.model)
    step, ckpt = load_run_weights(cfg, Path(run_dir), model, step, lambda m: print(f"warning: {m}", file=sys.stderr))
    dev = pick_device(device, 0)
    model = model.to(dev).eval()
    return RunModel(cfg, model, tok, manifest.eos_id, step, ckpt, dev)
