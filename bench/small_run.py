"""Whole small run: `mltrain train configs/shakespeare-char.yaml` vs a plain PyTorch GPT loop, wall clock.

The CPU recipe of a well-known Tiny Shakespeare baseline (char-level, ~0.8M parameters, 64-token
context, batch 12, 2000 steps, eval every 250 steps on 20 batches, checkpoint every 500). Two
programs, each timed as a whole fresh process (interpreter start, imports, setup, training, evals,
checkpoints, exit):

  A  `python -m mltrain train <config>`: the shipped config as a user runs it (only the data and
     run paths point into a temp dir, and `train.device: cpu`).
  B  a plain nanoGPT-style loop (`--plain`, below): the GPT of bench/overhead.py (LayerNorm, learned
     positions, GELU MLP 4x, tied head, ~the same parameter count, both counts in the result), torch's
     default AdamW (what that baseline uses on CPU), weight decay on matrices, the same warmup +
     cosine LR, grad clip, random windows of the same prepared token data (written once as plain
     uint16 .bin files), the same number of steps, loss read every log_every steps, an eval of
     eval_batches val batches every eval_every steps and at the end, and a torch.save checkpoint
     (model + optimizer) every checkpoint.every_steps and at the end.

Pairs run interleaved (A B, B A, A B, ...) so a change in machine load hits both alike; each side
gets the same CPU threads (OMP/MKL env and torch.set_num_threads). Per run: wall seconds, CPU
seconds of the child (getrusage RUSAGE_CHILDREN), the load average before it, and the final val
loss (both must learn). The result is the median over pairs of wall(A)/wall(B); the CPU-time ratio
is recorded too (on a shared machine wall time also counts waiting for a core).

    python bench/small_run.py                  # 3 pairs; writes bench/results/cpu-small-run-<date>.json
    python bench/small_run.py --pairs 5 --threads 2 --text input.txt   # Tiny Shakespeare itself
    python bench/small_run.py --smoke          # seconds (a few steps); result to a temp file
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, default_out, environment, stand_in_text, write_json

CONFIG = ROOT / "configs" / "shakespeare-char.yaml"
TARGET_MAX_RATIO = 1.0


# --------------------------------------------------------------------------- B: the plain loop (child)


def plain_main(spec_path: Path) -> None:
    """The plain GPT training loop, in the style of the public baseline's train.py (CPU, no compile)."""
    import numpy as np
    import torch
    from overhead import GPT

    s = json.loads(spec_path.read_text())
    torch.set_num_threads(s["threads"])
    torch.manual_seed(s["seed"])
    train_data = np.memmap(s["train_bin"], dtype=np.uint16, mode="r")
    val_data = np.memmap(s["val_bin"], dtype=np.uint16, mode="r")
    T, B = s["seq_len"], s["batch"]

    def get_batch(data: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy(data[i : i + T].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + T].astype(np.int64)) for i in ix])
        return x, y

    model = GPT(s["vocab"], s["dim"], s["layers"], s["heads"], T)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": s["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=s["lr"],
        betas=(s["beta1"], s["beta2"]),
    )

    def get_lr(it: int) -> float:
        if it <= s["warmup"]:
            return s["lr"] * it / s["warmup"]
        ratio = min(1.0, (it - s["warmup"]) / max(1, s["steps"] - s["warmup"]))
        lo = s["lr"] * s["min_lr_ratio"]
        return lo + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (s["lr"] - lo)

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        losses = [model(*get_batch(val_data)).item() for _ in range(s["eval_batches"])]
        model.train()
        return sum(losses) / len(losses)

    def save(step: int) -> None:
        ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
        torch.save(ckpt, Path(s["out_dir"]) / "ckpt.pt")

    last = float("nan")
    for it in range(1, s["steps"] + 1):
        for g in opt.param_groups:
            g["lr"] = get_lr(it)
        x, y = get_batch(train_data)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        if it % s["log_every"] == 0:
            print(f"step {it} loss {loss.item():.4f}", flush=True)
        if s["eval_every"] and it % s["eval_every"] == 0 and it < s["steps"]:
            last = val_loss()
            print(f"eval step {it} | val loss {last:.4f}", flush=True)
        if s["ckpt_every"] and it % s["ckpt_every"] == 0 and it < s["steps"]:
            save(it)
    last = val_loss()
    print(f"eval step {s['steps']} | val loss {last:.4f}", flush=True)
    save(s["steps"])


# --------------------------------------------------------------------------- setup (parent)


def setup(work: Path, a: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Prepared data (mltrain's prepare, once, untimed), the run config A trains and the spec B reads."""
    import numpy as np
    import yaml

    from mltrain.config import RunConfig
    from mltrain.data.manifest import load_manifest
    from mltrain.data.prepare import prepare_data
    from mltrain.data.shards import open_shard
    from mltrain.model.flops import param_count

    body = Path(a.text).read_text(encoding="utf-8") if a.text else stand_in_text(a.chars)
    cut = int(len(body) * 0.9)  # the baseline's split: first 90% trains, last 10% validates
    (work / "train.txt").write_text(body[:cut], encoding="utf-8")
    (work / "val.txt").write_text(body[cut:], encoding="utf-8")
    raw = yaml.safe_load(CONFIG.read_text())
    raw["data"].update(sources=[str(work / "train.txt")], val_sources=[str(work / "val.txt")], dir=str(work / "data"))
    raw["train"]["device"] = "cpu"
    if a.steps:  # --smoke or a shorter run: scale eval/checkpoint cadence with the steps
        raw["train"].update(max_steps=a.steps, eval_every=max(1, a.steps // 2), eval_batches=2, log_every=5)
        raw["train"]["warmup_steps"] = min(raw["train"]["warmup_steps"], max(1, a.steps // 4))
        raw["checkpoint"]["every_steps"] = max(1, a.steps // 2)
    cfg = RunConfig.model_validate({**raw, "base_dir": str(work / "unused")})
    prepare_data(cfg)
    manifest = load_manifest(cfg.data.dir)
    for split in ("train", "val"):  # the same tokens as plain .bin files for the plain loop
        arrays = [np.asarray(open_shard(Path(cfg.data.dir) / sh.file)) for sh in manifest.splits[split]]
        np.concatenate(arrays).astype(np.uint16).tofile(work / f"{split}.bin")
    tc, m = cfg.train, cfg.model
    spec = {
        "threads": a.threads,
        "seed": cfg.seed,
        "train_bin": str(work / "train.bin"),
        "val_bin": str(work / "val.bin"),
        "seq_len": tc.seq_len,
        "batch": tc.micro_batch_size,
        "vocab": m.vocab_size,
        "dim": m.hidden_size,
        "layers": m.n_layers,
        "heads": m.n_heads,
        "lr": tc.lr,
        "min_lr_ratio": tc.min_lr_ratio,
        "warmup": tc.warmup_steps,
        "beta1": tc.beta1,
        "beta2": tc.beta2,
        "weight_decay": tc.weight_decay,
        "grad_clip": tc.grad_clip,
        "steps": tc.max_steps,
        "log_every": tc.log_every,
        "eval_every": tc.eval_every,
        "eval_batches": tc.eval_batches,
        "ckpt_every": cfg.checkpoint.every_steps,
    }
    import torch
    from overhead import GPT

    gpt_params = sum(
        p.numel() for p in GPT(m.vocab_size, m.hidden_size, m.n_layers, m.n_heads, tc.seq_len).parameters()
    )
    recipe = {
        "config": str(CONFIG.relative_to(ROOT)),
        "mltrain_params": param_count(m),
        "plain_gpt_params": gpt_params,
        "seq_len": tc.seq_len,
        "micro_batch": tc.micro_batch_size,
        "steps": tc.max_steps,
        "eval_every": tc.eval_every,
        "eval_batches": tc.eval_batches,
        "checkpoint_every": cfg.checkpoint.every_steps,
        "text": Path(a.text).name if a.text else f"generated stand-in, {a.chars} chars",  # no machine paths
        "train_tokens": int((work / "train.bin").stat().st_size // 2),
        "torch_threads": a.threads,
    }
    del torch
    return {"raw": raw, "spec": spec}, recipe


# --------------------------------------------------------------------------- timing


VAL_RE = re.compile(r"val loss ([0-9.]+|nan|inf)")


def run_side(side: str, work: Path, prepared: dict[str, Any], i: int, threads: int) -> dict[str, Any]:
    """One fresh process of `side` ("mltrain" or "plain"): wall and CPU seconds, load, final val loss."""
    import yaml

    out_dir = work / f"{side}-{i}"
    out_dir.mkdir()
    if side == "mltrain":  # a fresh run dir each time, or the second run would resume the first
        cfg_path = out_dir / "run.yaml"
        cfg_path.write_text(yaml.safe_dump({**prepared["raw"], "base_dir": str(out_dir)}))
        cmd = [sys.executable, "-m", "mltrain", "train", str(cfg_path)]
    else:
        spec_path = out_dir / "spec.json"
        spec_path.write_text(json.dumps({**prepared["spec"], "out_dir": str(out_dir)}))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--plain", str(spec_path)]
    n = str(threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TERM": "dumb", "COLUMNS": "120"}
    load = os.getloadavg()[0]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out_dir, env=env, capture_output=True, text=True, timeout=7200)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{side} run failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    vals = VAL_RE.findall(proc.stdout + proc.stderr)
    return {
        "side": side,
        "wall_s": wall,
        "cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
        "minor_page_faults": r1.ru_minflt - r0.ru_minflt,
        "loadavg_1m_before": load,
        "final_val_loss": float(vals[-1]) if vals else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3, help="interleaved pairs (A B, B A, ...)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for both sides (1: stable when shared)")
    ap.add_argument("--steps", type=int, default=0, help="override max_steps (0: the config's; --smoke: 10)")
    ap.add_argument("--text", help="train on this text (e.g. Tiny Shakespeare's input.txt) instead of the stand-in")
    ap.add_argument("--chars", type=int, default=300_000, help="stand-in size in characters")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. machine load)")
    ap.add_argument("--smoke", action="store_true", help="a few steps, 1 pair; result to a temp file")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plain", type=Path, help=argparse.SUPPRESS)  # child: run the plain loop from this spec
    a = ap.parse_args()
    if a.plain:
        plain_main(a.plain)
        return
    if a.smoke:
        a.pairs, a.steps, a.chars = 1, a.steps or 10, 20_000
    work = Path(tempfile.mkdtemp(prefix="mltrain-small-run-"))
    prepared, recipe = setup(work, a)
    print(
        f"params: mltrain {recipe['mltrain_params']:,}, plain GPT {recipe['plain_gpt_params']:,}; "
        f"{recipe['steps']} steps, {a.threads} thread(s), work dir {work}",
        flush=True,
    )
    pairs = []
    for i in range(a.pairs):
        order = ("mltrain", "plain") if i % 2 == 0 else ("plain", "mltrain")
        runs = {side: run_side(side, work, prepared, i, a.threads) for side in order}
        m, p = runs["mltrain"], runs["plain"]
        pair = {
            "order": list(order),
            "mltrain": m,
            "plain": p,
            "ratio_wall": m["wall_s"] / p["wall_s"],
            "ratio_cpu": m["cpu_s"] / p["cpu_s"],
        }
        pairs.append(pair)
        print(
            f"pair {i + 1}/{a.pairs} ({' then '.join(order)}): wall mltrain {m['wall_s']:.1f}s plain {p['wall_s']:.1f}s "
            f"(ratio {pair['ratio_wall']:.3f}); CPU {m['cpu_s']:.1f}s vs {p['cpu_s']:.1f}s (ratio {pair['ratio_cpu']:.3f}); "
            f"val loss {m['final_val_loss']} vs {p['final_val_loss']}; load {m['loadavg_1m_before']:.2f}/{p['loadavg_1m_before']:.2f}",
            flush=True,
        )
    median_wall = statistics.median(p["ratio_wall"] for p in pairs)
    median_cpu = statistics.median(p["ratio_cpu"] for p in pairs)
    import torch

    result = {
        "benchmark": "small_run",
        "mode": "smoke" if a.smoke else "full",
        "device": "cpu",
        "env": environment(torch.device("cpu")),
        "note": a.note,
        "command": "python bench/small_run.py "
        + " ".join(Path(x).name if a.text and x == a.text else x for x in sys.argv[1:]),
        "recipe": recipe,
        "loadavg_at_end": list(os.getloadavg()),
        "pairs": pairs,
        "median_ratio_wall": median_wall,
        "median_ratio_cpu": median_cpu,
        "median_mltrain_wall_s": statistics.median(p["mltrain"]["wall_s"] for p in pairs),
        "median_plain_wall_s": statistics.median(p["plain"]["wall_s"] for p in pairs),
        "target_max_ratio": TARGET_MAX_RATIO,
        "meets_target": median_wall <= TARGET_MAX_RATIO,
    }
    out = a.out or default_out("small-run", a.smoke, "cpu")
    write_json(out, result)
    print(f"median ratio mltrain/plain: wall {median_wall:.3f}, CPU {median_cpu:.3f} -> {out}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
