"""Checkpoint stall: sync vs async DCP save of model + AdamW state, through mltrain's CheckpointManager.

The state is the trainer's (`get_state_dict(model, optimizer)`): the Qwen2.5-0.5B shape with fp32
parameters and both AdamW moments, about 6 GB. For each mode the script saves `--repeats` times
and reports, per save:
  - blocked_s: how long the training loop is stopped. sync: the whole `save()` (write + commit);
    async: until `save()` returns (DCP staging of the state to CPU memory);
  - total_s: until the checkpoint is committed (async: `save()` + `wait()`), which includes
    checksumming every file (xxh3-128, reported separately as hash_s / hash GB/s from the marker).
Then the newest checkpoint is verified as a resume does (every file re-hashed: verify GB/s, page
cache evicted first), and loaded back into the live model/optimizer (`CheckpointManager.load`),
with the files evicted again, for load GB/s.

Two extra rows call `dcp.async_save` directly with a persistent pinned-memory `DefaultStager`: the
lever the manager does not use yet (see docs/performance.md); they are not committed checkpoints.

    python bench/checkpoint.py                 # one GPU, full size; "no CUDA device: skipping" without
    python bench/checkpoint.py --smoke         # tiny model on CPU into a temp dir
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import SKIP_LINE, SMOKE_MODEL, default_out, environment, sync, write_json

TARGET_ASYNC_BLOCKED_S = 1.0


def build_state(smoke: bool, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """Model + AdamW with both moments materialised (one step on zero gradients)."""
    from mltrain.config import ModelConfig, TrainConfig
    from mltrain.model.transformer import Transformer
    from mltrain.train.optim import build_optimizer

    cfg = ModelConfig(**SMOKE_MODEL) if smoke else ModelConfig(preset="qwen2.5-0.5b")
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    torch.manual_seed(0)
    model.init_weights()
    opt = build_optimizer(model, TrainConfig(), device)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt, cfg


def app_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Exactly what the trainer saves (Trainer._app_state)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd}


def state_bytes(state: Any) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def evict_page_cache(path: Path) -> bool:
    """Drop the files' clean pages so a load reads the disk, not RAM (no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for p in path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def make_train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, smoke: bool, device: torch.device) -> Any:
    """A real training step (bf16 autocast on GPU, chunked loss, AdamW) on a fixed random batch, synced:
    used to see whether a background checkpoint write slows training down."""
    seq, mb, chunk = (64, 2, 32) if smoke else (2048, 4, 4096)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (mb, seq), generator=g).to(device)
    y = torch.randint(0, model.cfg.vocab_size, (mb, seq), generator=g).to(device)

    def step() -> float:
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(x, y, loss_chunk_tokens=chunk)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - t

    return step


def bench_manager(
    mode: str,
    root: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    repeats: int,
    device: torch.device,
    train_step: Any = None,
    overlap_steps: int = 0,
) -> dict[str, Any]:
    """`repeats` saves through CheckpointManager (async_save per mode), then one load. With `train_step`,
    async mode trains up to `overlap_steps` steps while each background write is in flight."""
    import json

    from mltrain.train.checkpoint import MARKER, CheckpointManager, check_checkpoint, find_checkpoints

    notes: list[str] = []
    mgr = CheckpointManager(
        root / mode,
        keep_last=1,
        rank=0,
        world_size=1,
        async_save=mode == "async",
        warn=lambda m: notes.append(m),
        info=lambda m: None,
    )
    saves = []
    for i in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        ok = mgr.save(i + 1, app_state(model, opt), {"step": i + 1}, {})
        blocked = time.perf_counter() - t0
        ok = mgr.wait() and ok
        total = time.perf_counter() - t0
        if not ok:
            raise RuntimeError(f"{mode} save {i + 1} failed: {'; '.join(notes)}")
        saves.append({"blocked_s": blocked, "total_s": total})
    overlap = None
    if train_step is not None and overlap_steps > 0 and mode == "async":
        # One more save, training while it is written: does the background write slow the steps down?
        for _ in range(2):
            train_step()
        idle = [train_step() for _ in range(overlap_steps)]
        mgr.save(repeats + 1, app_state(model, opt), {"step": repeats + 1}, {})
        pending = mgr._pending  # (future, ...) of the in-flight write
        during = []
        while pending is not None and not pending[0].done() and len(during) < overlap_steps:
            during.append(train_step())
        still_writing = pending is not None and not pending[0].done()
        mgr.wait()
        overlap = {
            "step_s_idle_median": statistics.median(idle),
            "step_s_during_write_median": statistics.median(during) if during else None,
            "steps_during_write": len(during),
            "write_outlasted_steps": still_writing,
            "slowdown": statistics.median(during) / statistics.median(idle) if during else None,
        }
    ((step, path),) = find_checkpoints(root / mode, deep=False)[-1:]
    on_disk = dir_bytes(path)
    hash_s = json.loads((path / MARKER).read_text()).get("hash_s")
    evict_page_cache(path)
    t0 = time.perf_counter()
    problem = check_checkpoint(path, deep=True)  # what a resume pays: every file re-read and hashed
    verify_s = time.perf_counter() - t0
    if problem:
        raise RuntimeError(f"{mode}: fresh checkpoint fails verification: {problem}")
    evicted = evict_page_cache(path)
    state = app_state(model, opt)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    sync(device)
    t0 = time.perf_counter()
    mgr.load(path, state, shapes)
    sync(device)
    load_s = time.perf_counter() - t0
    steady = saves[1:] or saves
    return {
        "saves": saves,
        "blocked_s_first": saves[0]["blocked_s"],
        "blocked_s_median": statistics.median(s["blocked_s"] for s in steady),
        "blocked_s_max": max(s["blocked_s"] for s in saves),
        "total_s_median": statistics.median(s["total_s"] for s in steady),
        "checkpoint_bytes": on_disk,
        "save_gb_per_s": on_disk / 1e9 / statistics.median(s["total_s"] for s in steady),
        "load_s": load_s,
        "load_gb_per_s": on_disk / 1e9 / load_s,
        "hash_s": hash_s,
        "hash_gb_per_s": on_disk / 1e9 / hash_s if hash_s else None,
        "verify_s": verify_s,
        "verify_gb_per_s": on_disk / 1e9 / verify_s,
        "page_cache_evicted_before_load": evicted,
        "warnings": notes,
        "train_during_async_write": overlap,
    }


def hash_rates(nbytes: int) -> dict[str, float]:
    """In-memory GB/s of the checkpoint checksum (xxh3-128) and, for scale, sha256: the CPU cost of
    hashing; the per-mode hash/verify columns add the file system's read speed."""
    import hashlib

    import xxhash

    buf = os.urandom(1 << 20) * (nbytes >> 20)
    out = {}
    for name, new in (("xxh3_128", xxhash.xxh3_128), ("sha256", hashlib.sha256)):
        t0 = time.perf_counter()
        h = new()
        for i in range(0, len(buf), 1 << 23):
            h.update(memoryview(buf)[i : i + (1 << 23)])
        h.hexdigest()
        out[name] = len(buf) / 1e9 / (time.perf_counter() - t0)
    return out


def bench_pinned_stager(
    root: Path,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    repeats: int,
    device: torch.device,
    async_staging: bool,
) -> dict[str, Any]:
    """dcp.async_save with one DefaultStager kept across saves (pinned CPU buffers reused)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    cuda = device.type == "cuda"
    stager = DefaultStager(
        StagingOptions(
            use_pinned_memory=cuda, use_shared_memory=False, use_async_staging=async_staging, use_non_blocking_copy=cuda
        )
    )
    saves = []
    try:
        for i in range(repeats):
            out = root / f"pinned-{'bg' if async_staging else 'sync'}-{i}"
            sync(device)
            t0 = time.perf_counter()
            res = dcp.async_save(app_state(model, opt), checkpoint_id=str(out), async_stager=stager)
            blocked = time.perf_counter() - t0
            if hasattr(res, "staging_completion"):  # async staging: training may run fwd/bwd, but must
                res.staging_completion.result()  # wait for this before the next optimizer.step()
                staged = time.perf_counter() - t0
                res.upload_completion.result()
            else:
                staged = blocked
                res.result()
            total = time.perf_counter() - t0
            saves.append({"blocked_s": blocked, "staged_s": staged, "total_s": total})
            shutil.rmtree(out, ignore_errors=True)
    finally:
        stager.close()
    steady = saves[1:] or saves
    return {
        "saves": saves,
        "blocked_s_first": saves[0]["blocked_s"],
        "blocked_s_median": statistics.median(s["blocked_s"] for s in steady),
        "staged_s_median": statistics.median(s["staged_s"] for s in steady),
        "total_s_median": statistics.median(s["total_s"] for s in steady),
        "note": "not through CheckpointManager; a recommended change (docs/performance.md)",
    }


def print_table(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"checkpoint save/load: {data['model_name']}, {data['state_gb']:.2f} GB state, {data['device']}")
    cols = ("mode", "blocked s (first)", "blocked s (median)", "total s", "save GB/s", "hash GB/s", "verify GB/s")
    for col in (*cols, "load GB/s"):
        t.add_column(col, justify="left" if col == "mode" else "right")
    for mode, r in data["modes"].items():
        t.add_row(
            mode,
            f"{r['blocked_s_first']:.3f}",
            f"{r['blocked_s_median']:.3f}",
            f"{r['total_s_median']:.2f}",
            f"{r['save_gb_per_s']:.2f}" if "save_gb_per_s" in r else "-",
            f"{r['hash_gb_per_s']:.2f}" if r.get("hash_gb_per_s") else "-",
            f"{r['verify_gb_per_s']:.2f}" if "verify_gb_per_s" in r else "-",
            f"{r['load_gb_per_s']:.2f}" if "load_gb_per_s" in r else "-",
        )
    c = Console(width=None if Console().is_terminal else 140)
    c.print(t)
    ov = data["modes"]["async"].get("train_during_async_write")
    if ov and ov["steps_during_write"]:
        c.print(
            f"training during an async write: {ov['step_s_during_write_median']:.3f} s/step vs "
            f"{ov['step_s_idle_median']:.3f} idle ({ov['slowdown']:.2f}x, {ov['steps_during_write']} steps)"
        )
    c.print(
        "checksum speed in memory (one core): "
        + ", ".join(f"{k} {v:.2f} GB/s" for k, v in data["hash_in_memory_gb_per_s"].items())
    )
    c.print(f"targets: {data['targets_met']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU into a temp dir")
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/<gpu>-checkpoint-<date>.json)")
    p.add_argument(
        "--dir",
        type=Path,
        help="where checkpoints are written (default: a temp dir; use the "
        "training file system, e.g. FSx, for representative numbers)",
    )
    p.add_argument("--repeats", type=int, default=3, help="saves per mode (the first async one allocates)")
    p.add_argument("--no-lever", action="store_true", help="skip the direct pinned-stager rows")
    p.add_argument(
        "--overlap-steps",
        type=int,
        default=10,
        help="async: train up to this many steps while one extra save is written, vs the same steps idle (0: off)",
    )
    args = p.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    device = torch.device("cpu" if args.smoke else "cuda")
    device_name = "cpu" if args.smoke else torch.cuda.get_device_name(device)
    out = args.out or default_out("checkpoint", args.smoke, device_name)
    model, opt, cfg = build_state(args.smoke, device)
    train_step = make_train_step(model, opt, args.smoke, device) if args.overlap_steps > 0 else None
    nbytes = state_bytes(app_state(model, opt))
    print(f"[bench] state {nbytes / 1e9:.2f} GB (model + AdamW moments) on {device_name}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="mltrain-bench-ckpt-", dir=args.dir))
    try:
        modes: dict[str, Any] = {}
        for mode in ("sync", "async"):
            print(f"[bench] {mode}: {args.repeats} saves through CheckpointManager, then a load", flush=True)
            modes[mode] = bench_manager(mode, root, model, opt, args.repeats, device, train_step, args.overlap_steps)
            shutil.rmtree(root / mode, ignore_errors=True)
        if not args.no_lever:
            for bg in (False, True):
                name = "dcp_pinned_stager" + ("_async_staging" if bg else "")
                print(f"[bench] {name}: {args.repeats} saves, direct dcp.async_save", flush=True)
                try:
                    modes[name] = bench_pinned_stager(root, model, opt, args.repeats, device, async_staging=bg)
                except ImportError as e:  # DefaultStager/StagingOptions are recent DCP API
                    print(f"[bench]   skipped: {e}", flush=True)
        fs_type = None
        try:
            import subprocess

            fs_type = (
                subprocess.run(["df", "-T", str(root)], capture_output=True, text=True, timeout=10)
                .stdout.splitlines()[-1]
                .split()[1]
            )
        except Exception:  # informational only
            pass
    finally:
        shutil.rmtree(root, ignore_errors=True)
    a = modes["async"]
    data = {
        "benchmark": "checkpoint",
        "mode": "smoke" if args.smoke else "full",
        "device": device_name,
        "env": environment(device),
        "model_name": "tiny-qwen2 (smoke)" if args.smoke else "qwen2.5-0.5b",
        "model": cfg.model_dump(mode="json"),
        "state_bytes": nbytes,
        "state_gb": nbytes / 1e9,
        "checkpoint_dir_parent": str(args.dir or tempfile.gettempdir()),
        "filesystem": fs_type,
        "repeats": args.repeats,
        "modes": modes,
        "sync_blocked_s": modes["sync"]["blocked_s_median"],
        "async_blocked_s": a["blocked_s_median"],
        "async_blocked_s_max": a["blocked_s_max"],
        "async_write_train_slowdown": (a.get("train_during_async_write") or {}).get("slowdown"),
        "save_gb_per_s": {m: r["save_gb_per_s"] for m, r in modes.items() if "save_gb_per_s" in r},
        "load_gb_per_s": {m: r["load_gb_per_s"] for m, r in modes.items() if "load_gb_per_s" in r},
        "hash_gb_per_s": {m: r["hash_gb_per_s"] for m, r in modes.items() if r.get("hash_gb_per_s")},
        "verify_gb_per_s": {m: r["verify_gb_per_s"] for m, r in modes.items() if "verify_gb_per_s" in r},
        "hash_in_memory_gb_per_s": hash_rates(64 << 20 if args.smoke else 1 << 30),
        "targets": {"async_blocked_s": TARGET_ASYNC_BLOCKED_S},
        "targets_met": {"async_blocked_s<=1": bool(a["blocked_s_max"] <= TARGET_ASYNC_BLOCKED_S)},
    }
    write_json(out, data)
    print_table(data)
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
