"""Loader throughput: tokens/s that mltrain's TokenLoader delivers on ONE CPU core.

The trainer calls `TokenLoader.next_batch()` in its own loop (no worker processes), so the loader
must be far ahead of the GPU: the target is >= 10x the training tokens/s of one GPU. The process
pins itself to one core (sched_setaffinity, what `taskset -c N` does) and one torch thread, then
takes batches of [batch, seq_len] for `--seconds`, over a prepared data dir (default: ~4 MB of the
Python standard library prepared here with mltrain's own `prepare`, BPE 8192, uint16 shards).

The training rate to compare with comes from --train-tokens-per-s, else the newest
bench/results JSON of bench/train_throughput.py (its best mltrain variant), else the training target
for one H100 (1.4 x the HF + compile baseline of 100.2k tokens/s). Runs fully on CPU.

    python bench/loader.py                     # writes bench/results/cpu-loader-<date>.json
    python bench/loader.py --smoke             # a second on a tiny corpus, to a temp file
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS_DIR, ROOT, default_out, environment, newest_result, prepare_corpus, write_json

TARGET_RATIO = 10.0
# mltrain's training throughput target on one H100: 1.4 x the HF + compile baseline of 100.2k tokens/s.
H100_TARGET_TRAIN_TPS = 1.4 * 100.2e3


def pin_to_one_core(core: int | None) -> int | None:
    """Restrict this process to one CPU (the last allowed one unless given); None if unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1] if core is None else core
    os.sched_setaffinity(0, {cpu})
    return cpu


def training_rate(arg: float | None) -> tuple[float, str]:
    """(tokens/s of training on one GPU, where the number came from)."""
    if arg:
        return arg, "--train-tokens-per-s"
    path = newest_result()
    if path is not None:
        data = json.loads(path.read_text())
        best = data.get("best_mltrain_variant")
        if data.get("mode") == "full" and best and "tokens_per_s" in data["variants"].get(best, {}):
            rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            return float(data["variants"][best]["tokens_per_s"]), f"{rel} ({best})"
    return H100_TARGET_TRAIN_TPS, "H100 training target: 1.4 x HF+compile 100.2k tokens/s (no GPU result yet)"


def measure(loader: Any, seconds: float, pin: bool) -> dict[str, Any]:
    """Take batches for `seconds`; tokens/s and per-batch latency."""
    for _ in range(3):  # warm the page cache and the epoch permutation
        loader.next_batch()
    lat = []
    tokens = 0
    t_end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        x, y = loader.next_batch()
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        lat.append(time.perf_counter() - t)
        tokens += x.numel()
        if t + lat[-1] >= t_end:
            break
    elapsed = time.perf_counter() - t0
    lat_sorted = sorted(lat)
    return {
        "batches": len(lat),
        "tokens": tokens,
        "seconds": elapsed,
        "tokens_per_s": tokens / elapsed,
        "ms_per_batch_median": 1e3 * statistics.median(lat),
        "ms_per_batch_p99": 1e3 * lat_sorted[min(len(lat) - 1, int(0.99 * len(lat)))],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny corpus, short run, result to a temp file")
    p.add_argument("--data", type=Path, help="a prepared mltrain data dir (default: prepare ~4 MB of the stdlib)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8, help="micro-batch size")
    p.add_argument("--seconds", type=float, help="measuring time per mode (default 10; smoke 0.5)")
    p.add_argument("--core", type=int, help="CPU to pin to (default: the last allowed one)")
    p.add_argument("--train-tokens-per-s", type=float, help="training rate to compare with (one GPU)")
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/cpu-loader-<date>.json)")
    args = p.parse_args(argv)
    seconds = args.seconds or (0.5 if args.smoke else 10.0)
    seq_len = args.seq_len if not args.smoke or args.seq_len != 2048 else 256

    from mltrain.data.loader import TokenLoader

    tmp = None
    data_dir, data_source = args.data, f"{args.data}"
    if data_dir is None:  # prepared before pinning: prepare itself uses every core
        tmp = tempfile.TemporaryDirectory(prefix="mltrain-bench-loader-")
        nbytes = 300_000 if args.smoke else 4_000_000
        vocab = 1024 if args.smoke else 8192
        data_dir = prepare_corpus(Path(tmp.name) / "data", nbytes, vocab, 151936)
        data_source = f"builtin:python-stdlib, {nbytes / 1e6:g} MB, byte-level BPE {vocab} (prepared here)"
    try:
        cpu = pin_to_one_core(args.core)
        torch.set_num_threads(1)
        loader = TokenLoader(data_dir, "train", seq_len, args.batch, rank=0, world_size=1, seed=0)
        print(
            f"[bench] loader on cpu {cpu} (1 thread): seq {seq_len}, batch {args.batch}, "
            f"{loader.total_tokens:,} tokens ({loader.manifest.dtype}), {seconds:g} s per mode",
            flush=True,
        )
        plain = measure(loader, seconds, pin=False)
        # pin_memory needs a CUDA driver; it is what a prefetching trainer would add per batch
        pinned = measure(loader, seconds, pin=True) if torch.cuda.is_available() else None
    finally:
        if tmp is not None:
            tmp.cleanup()
    train_tps, train_src = training_rate(args.train_tokens_per_s)
    ratio = plain["tokens_per_s"] / train_tps
    out = args.out or default_out("loader", args.smoke, "cpu")
    data = {
        "benchmark": "loader",
        "mode": "smoke" if args.smoke else "full",
        "device": "cpu",
        "env": environment("cpu"),
        "pinned_cpu": cpu,
        "torch_threads": torch.get_num_threads(),
        "data": data_source,
        "shard_dtype": str(loader.manifest.dtype),
        "seq_len": seq_len,
        "micro_batch": args.batch,
        "loader": plain,
        "loader_plus_pin_memory": pinned,
        "tokens_per_s": plain["tokens_per_s"],
        "train_tokens_per_s": train_tps,
        "train_tokens_per_s_source": train_src,
        "ratio_vs_training": ratio,
        "loader_share_of_step": 1.0 / ratio,
        "targets": {"ratio_vs_training": TARGET_RATIO},
        "targets_met": {"loader>=10x_training": bool(ratio >= TARGET_RATIO)},
    }
    write_json(out, data)
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"TokenLoader on one CPU core: seq {seq_len}, batch {args.batch}")
    for col in ("mode", "tokens/s", "ms/batch (median)", "ms/batch (p99)", "x training"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for name, r in (("next_batch", plain), ("next_batch + pin_memory", pinned)):
        if r is None:
            continue
        t.add_row(
            name,
            f"{r['tokens_per_s']:,.0f}",
            f"{r['ms_per_batch_median']:.3f}",
            f"{r['ms_per_batch_p99']:.3f}",
            f"{r['tokens_per_s'] / train_tps:.1f}",
        )
    c = Console(width=None if Console().is_terminal else 120)
    c.print(t)
    c.print(f"training rate {train_tps:,.0f} tokens/s from {train_src}; targets: {data['targets_met']}")
    print(f"[bench] wrote {out if not str(out).startswith(str(RESULTS_DIR)) else out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
