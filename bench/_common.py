"""Helpers shared by the bench scripts: result paths, JSON writing, device facts, a prepared corpus.

The scripts run as `python bench/<name>.py`, so this directory is on sys.path and they import
`_common` directly; nothing here is part of the mltrain package.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
if importlib.util.find_spec("mltrain") is None:  # a checkout without `pip install -e .` (e.g. a bare GPU box)
    sys.path.insert(0, str(ROOT / "src"))
SKIP_LINE = "no CUDA device: skipping"


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")


def slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (safe in a file name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def default_out(kind: str, smoke: bool, device_name: str) -> Path:
    """Where a result goes: bench/results/<device>[-kind]-<date>.json, or a temp file for smoke runs
    (smoke numbers are not results and must never land in the repo by accident)."""
    stem = slug(device_name) + (f"-{kind}" if kind else "") + f"-{today()}"
    if smoke:
        return Path(tempfile.mkdtemp(prefix="mltrain-bench-")) / f"smoke-{stem}.json"
    return RESULTS_DIR / f"{stem}.json"


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Atomic write (temp + os.replace) so a crashed run never leaves half a result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def host_environment(loadavg_at_start: tuple[float, float, float]) -> dict[str, Any]:
    """The machine a CPU-bound bench ran on, and how busy it was from start to end (the S3 benches share the
    cores with their server, so the load is part of the figure)."""
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": loadavg_at_start,
        "loadavg_at_end": os.getloadavg(),
    }


def environment(device: Any) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: versions, device, commit, time."""
    import torch

    env: dict[str, Any] = {
        "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    if getattr(device, "type", device) == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_matmul_peak(device: Any, dtype: Any = None, n: int = 8192, iters: int = 50) -> float:
    """Achieved FLOP/s of a big square matmul (bf16 on CUDA): the practical ceiling for MFU."""
    import torch

    dtype = dtype or (torch.bfloat16 if getattr(device, "type", device) == "cuda" else torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    dt_s = time.perf_counter() - t0
    return 2.0 * n**3 * iters / dt_s


def sync(device: Any) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize(device)


def prepare_corpus(
    data_dir: Path, max_source_bytes: int, bpe_vocab_size: int, model_vocab_size: int, shard_tokens: int = 1 << 22
) -> Path:
    """Tokenize `max_source_bytes` of the builtin Python-stdlib corpus into `data_dir` with mltrain's
    own prepare (a byte-level BPE of `bpe_vocab_size`): real text, no network."""
    from mltrain.config import RunConfig
    from mltrain.data.prepare import prepare_data

    cfg = RunConfig.model_validate(
        {
            "name": "bench-data",
            "model": {"preset": "tiny", "vocab_size": model_vocab_size},
            "data": {
                "sources": ["builtin:python-stdlib"],
                "dir": str(data_dir),
                "max_source_bytes": max_source_bytes,
                "bpe_vocab_size": bpe_vocab_size,
                "shard_tokens": shard_tokens,
                "val_fraction": 0.02,
            },
        }
    )
    prepare_data(cfg)
    return Path(data_dir)


def newest_result(pattern: str = "*.json", key: str = "variants") -> Path | None:
    """The most recently written bench/results JSON holding `key` (a training-throughput result)."""
    found = []
    for p in RESULTS_DIR.glob(pattern):
        try:
            if key in json.loads(p.read_text()):
                found.append(p)
        except (OSError, ValueError):
            continue
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


# A model small enough for a CPU smoke run, with every Qwen2 feature on (GQA, qkv bias, tied head).
SMOKE_MODEL = dict(
    vocab_size=1024,
    hidden_size=64,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    ffn_hidden_size=128,
    max_seq_len=256,
    rope_theta=1e6,
    norm_eps=1e-6,
    qkv_bias=True,
    tie_embeddings=True,
)


def stand_in_text(chars: int) -> str:
    """The generated Tiny-Shakespeare stand-in of scripts/shakespeare_char_data.py (benches run without the text)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shakespeare_char_data", ROOT / "scripts/shakespeare_char_data.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.stand_in(chars)
