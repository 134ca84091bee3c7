"""Shared fixtures: a small prepared corpus and a tiny run config for end-to-end tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Two cores: keep every worker single-threaded so 2-process runs do not oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """~300 KB of the standard library, tokenized with a 1k BPE; shared by every end-to-end test."""
    from mltrain.config import RunConfig
    from mltrain.data.prepare import prepare_data

    d = tmp_path_factory.mktemp("tiny-data") / "data"
    cfg = RunConfig.model_validate({
        "name": "prep", "model": {"preset": "tiny"},
        "data": {"sources": ["builtin:python-stdlib"], "dir": str(d), "max_source_bytes": 300_000,
                 "bpe_vocab_size": 1024, "shard_tokens": 40_000, "val_fraction": 0.05},
    })
    prepare_data(cfg)
    return d


def tiny_run_config(base: Path, data_dir: Path, name: str = "t", **train) -> dict:
    """A model small enough that a 2-process step takes milliseconds on CPU."""
    cfg = {
        "name": name,
        "base_dir": str(base),
        "seed": 7,
        "model": {"preset": "tiny", "vocab_size": 1024, "hidden_size": 64, "n_layers": 2, "n_heads": 4,
                  "n_kv_heads": 2, "ffn_hidden_size": 128},
        "data": {"dir": str(data_dir)},
        "train": {"seq_len": 32, "micro_batch_size": 4, "max_steps": 8, "lr": 3e-3, "warmup_steps": 2,
                  "eval_every": 0, "eval_batches": 2, "log_every": 1, "tensorboard": False, **train},
        "checkpoint": {"every_steps": 3, "keep_last": 2},
    }
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def mltrain_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mltrain", *args]
