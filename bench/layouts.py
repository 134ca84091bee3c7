"""Training throughput of mltrain's layouts on ONE GPU: tokens/s/GPU, MFU and peak memory, next to
torchtitan's published multi-node figures for the same model families.

Each variant builds mltrain's own Trainer (the `parallel:` block path of `mltrain train`: Trainer ->
build_mesh -> parallelize_mesh, bf16 autocast, fused AdamW, its TokenLoader over real text) for a Llama 3.1
preset cut to a few layers, runs warm-up steps (compile included), then times `--steps` Trainer.train_step
calls between CUDA events. MFU = tokens/s x FLOPs per token (mltrain.model.flops, the reduced shape at
this sequence length) over the GPU's dense bf16 peak (mltrain.train.metrics: 989.4 TFLOP/s for H100 and
H200). Peak memory is torch.cuda.max_memory_allocated over build + steps, shown beside the planner's
memory model for the same layout (mltrain.cluster.layout.layout_memory_gib).

What one GPU can and cannot show:
- One process: only layouts of world size 1 really run. Tensor, pipeline, context and data parallelism
  need more ranks (NCCL refuses two ranks on one GPU), so no collective is timed here. What a 1-rank layout
  still chooses is measured: full activation checkpointing (the planner's other lever) and per-block
  compile. A rank whose parameter + gradient + AdamW state alone exceeds the GPU is skipped, not tried.
- A reduced-layer model is NOT the full model's shape: with 2 of 80 layers the embedding and the 128k
  vocabulary head are most of the parameters, and nothing is communicated. Its tokens/s cannot be compared
  with torchtitan's; its MFU is the nearest like-for-like figure, and even that sets one GPU without
  communication against 256-512 GPUs with it (and with Float8, whose peak is twice bf16's). The
  `full_shape_tokens_per_s_per_gpu_at_same_mfu` column is only that arithmetic, not a prediction.

    python bench/layouts.py                        # one H100/H200, ~5 min: llama3.1-8b (8 layers), llama3.1-70b (2)
    python bench/layouts.py --preset llama3.1-70b --layers 2 --steps 20 --variants 1rank_ac
    python bench/layouts.py --smoke --data DIR     # CPU, tiny model, fp32, seconds: the code path only
"""

from __future__ import annotations

import argparse
import gc
import math
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, SKIP_LINE, default_out, environment, prepare_corpus, today, write_json

ONE_GPU_NOTE = (
    "one process on one GPU: only world-size-1 layouts run (no TP/PP/CP/FSDP collectives); a reduced-layer "
    "model is not the full model's shape, so compare MFU, not tokens/s, with torchtitan's figures"
)

# torchtitan's published H100 figures (the torchtitan repository's Llama 3.1 H100 benchmark of December 2024,
# benchmarks/llama3_h100_202412_torchtitan.md, Tables 4 and 5): Grand Teton hosts of 8 H100 (96 GB HBM2e,
# 500 W) on NVLink, 400 Gb/s RDMA per GPU, tokens/s/GPU read at the 90th iteration, sequence length 8192 (its
# Llama 3.1 training configs), torch.compile and Float8 on the linear layers.
TORCHTITAN_SOURCE = (
    "torchtitan repository, Llama 3.1 H100 benchmark (Dec 2024, benchmarks/llama3_h100_202412_torchtitan.md, "
    "Tables 4-5): 8 x H100 96 GB per host, NVLink, 400 Gb/s RDMA per GPU, seq 8192, torch.compile + Float8"
)
TORCHTITAN = [
    {
        "model": "llama3.1-70b",
        "gpus": 256,
        "layout": "FSDP 32 x TP 8",
        "parallel": {"dp_shard": 32, "tp": 8},
        "seq_len": 8192,
        "local_batch": 16,
        "activation_checkpointing": "full",
        "techniques": "torch.compile + Float8",
        "tokens_per_s_per_gpu": [829.0],  # 876 with AsyncTP
        "memory_gib": [71.9],
    },
    {
        "model": "llama3.1-405b",
        "gpus": 512,
        "layout": "FSDP 8 x TP 8 x PP 8",
        "parallel": {"dp_shard": 8, "tp": 8, "pp": 8},
        "seq_len": 8192,
        "local_batch": 32,
        "activation_checkpointing": "full",
        "techniques": "torch.compile + Float8 + AsyncTP; 1F1B 100, Interleaved 1F1B 128",
        "tokens_per_s_per_gpu": [100.0, 128.0],
        "memory_gib": [82.5, 72.7],
    },
]
# layers kept per preset on one 80 GB GPU: parameters + gradients + AdamW (16 B per parameter) must leave room
DEFAULT_LAYERS = {"llama3.1-8b": 8, "llama3.1-70b": 2, "llama3.1-405b": 1}
DEFAULT_PRESETS = ["llama3.1-8b", "llama3.1-70b"]
STATE_BYTES_PER_PARAM = 16  # fp32 weights + fp32 gradients + AdamW m and v


@dataclass(frozen=True)
class Variant:
    """A world-size-1 layout: every parallel degree 1, with or without checkpointing and compile."""

    name: str
    activation_checkpointing: bool
    compile: bool
    note: str


VARIANTS = [
    Variant("1rank", False, True, "all degrees 1, per-block compile"),
    Variant("1rank_ac", True, True, "+ full activation checkpointing"),
    Variant("1rank_eager", False, False, "no compile"),
    Variant("1rank_ac_eager", True, False, "full activation checkpointing, no compile"),
]
DEFAULT_VARIANTS = ["1rank", "1rank_ac", "1rank_eager"]
SMOKE_VARIANTS = ["1rank_eager", "1rank_ac_eager"]  # compile on CPU takes minutes: --variants to ask for it


@dataclass
class Settings:
    smoke: bool
    device: str  # "cuda" | "cpu"
    presets: list[str]
    layers: int | None
    seq_len: int
    micro_batch: int
    warmup_steps: int
    timed_steps: int
    loss_chunk_tokens: int
    variants: list[Variant]


# --------------------------------------------------------------------------- figures (pure, unit-tested)


def model_config(preset: str, layers: int | None) -> Any:
    """The preset with `layers` of its blocks (None: all of them)."""
    from mltrain.config import ModelConfig

    return ModelConfig(preset=preset, **({"n_layers": layers} if layers else {}))


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float | None) -> float | None:
    return tokens_per_s * flops_per_token / peak_flops if peak_flops else None


def torchtitan_rows(peak_flops: float) -> list[dict[str, Any]]:
    """The published figures with what they imply by our FLOPs formula: achieved TFLOP/s per GPU and the MFU
    over the bf16 peak (a bf16-equivalent figure: Float8 matmuls have twice bf16's peak, which is why
    torchtitan itself reports no MFU for these runs)."""
    from mltrain.model.flops import flops_per_token

    rows = []
    for ref in TORCHTITAN:
        fpt = flops_per_token(model_config(ref["model"], None), ref["seq_len"])
        rows.append(
            {
                **ref,
                "flops_per_token": fpt,
                "achieved_tflops_per_gpu": [t * fpt / 1e12 for t in ref["tokens_per_s_per_gpu"]],
                "mfu_bf16_equivalent": [mfu(t, fpt, peak_flops) for t in ref["tokens_per_s_per_gpu"]],
            }
        )
    return rows


def shape_info(preset: str, layers: int | None, seq_len: int) -> dict[str, Any]:
    """The measured (reduced) shape and the full preset: parameters and FLOPs per token of each."""
    from mltrain.model.flops import flops_per_token, matmul_params, param_count

    cfg, full = model_config(preset, layers), model_config(preset, None)
    return {
        "preset": preset,
        "layers": cfg.n_layers,
        "full_layers": full.n_layers,
        "params": param_count(cfg),
        "matmul_params": matmul_params(cfg),
        "embedding_and_head_share": 1 - cfg.n_layers * _layer_params(cfg) / param_count(cfg),
        "flops_per_token": flops_per_token(cfg, seq_len),
        "full_params": param_count(full),
        "full_flops_per_token": flops_per_token(full, seq_len),
        "state_gib": param_count(cfg) * STATE_BYTES_PER_PARAM / 2**30,
    }


def _layer_params(cfg: Any) -> float:
    from mltrain.cluster.layout import layout_model_from_config

    return layout_model_from_config(cfg).layer_params


def memory_model_gib(preset: str, layers: int | None, micro_batch: int, seq_len: int, ac: bool) -> dict[str, float]:
    """The planner's memory model for this one-rank layout (its total counts 6 GiB of CUDA context and
    allocator overhead that max_memory_allocated does not see)."""
    from mltrain.cluster.layout import layout_memory_gib, layout_model_from_config

    m = layout_model_from_config(model_config(preset, layers))
    return layout_memory_gib(
        m, dp_shard=1, tp=1, cp=1, pp=1, micro_batch_size=micro_batch, seq_len=seq_len, checkpointing=ac
    )


def derived(tokens_per_s: float, shape: dict[str, Any], peak_flops: float | None) -> dict[str, Any]:
    """Throughput figures of one variant from its tokens/s (one GPU, so per GPU)."""
    m = mfu(tokens_per_s, shape["flops_per_token"], peak_flops)
    return {
        "tokens_per_s_per_gpu": tokens_per_s,
        "achieved_tflops_per_gpu": tokens_per_s * shape["flops_per_token"] / 1e12,
        "mfu": m,
        # the full model's tokens/s per GPU IF it ran at this MFU with communication free: arithmetic, no more
        "full_shape_tokens_per_s_per_gpu_at_same_mfu": (
            m * peak_flops / shape["full_flops_per_token"] if m is not None and peak_flops else None
        ),
    }


# --------------------------------------------------------------------------- one variant


def run_config(s: Settings, preset: str, layers: int | None, v: Variant, data_dir: Path, work: Path) -> Any:
    """The run config `mltrain train` would run for this layout on one device."""
    from mltrain.config import RunConfig

    model: dict[str, Any] = {"preset": preset, **({"n_layers": layers} if layers else {})}
    return RunConfig.model_validate(
        {
            "name": f"bench-{preset}-{v.name}",
            "base_dir": str(work / "runs"),
            "seed": 0,
            "model": model,
            "data": {"dir": str(data_dir)},
            "parallel": {"dp_replicate": 1, "dp_shard": 1, "tp": 1, "cp": 1, "pp": 1},
            "train": {
                "device": s.device,
                "dtype": "fp32" if s.smoke else "bf16",
                "compile": v.compile,
                "activation_checkpointing": v.activation_checkpointing,
                "loss_chunk_tokens": s.loss_chunk_tokens,
                "seq_len": s.seq_len,
                "micro_batch_size": s.micro_batch,
                "max_steps": 10_000,
                "warmup_steps": 2,
                "lr": 3e-4,
                "eval_every": 0,
                "tensorboard": False,
            },
            "checkpoint": {"every_steps": 0, "resume": False},
        }
    )


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()


def is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def run_variant(s: Settings, cfg: Any, shape: dict[str, Any], peak_flops: float | None) -> dict[str, Any]:
    """Build the Trainer, warm up, time `timed_steps` train_step calls."""
    import torch

    from mltrain.train.distributed import init_distributed
    from mltrain.train.trainer import Trainer

    free_memory(s.device)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, init_distributed(s.device))
    build_s = time.perf_counter() - t0
    assert trainer.layout is not None and trainer.info.world_size == 1
    t0 = time.perf_counter()
    for _ in range(s.warmup_steps):
        trainer.train_step()
    if s.device == "cuda":
        torch.cuda.synchronize()
    warmup_s = time.perf_counter() - t0
    losses = []
    if s.device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(s.timed_steps):
            losses.append(trainer.train_step()[0])
        end.record()
        end.synchronize()
        elapsed = start.elapsed_time(end) / 1e3
        peak_mem: float | None = torch.cuda.max_memory_allocated() / 2**30
    else:
        t0 = time.perf_counter()
        for _ in range(s.timed_steps):
            losses.append(trainer.train_step()[0])
        elapsed = time.perf_counter() - t0
        peak_mem = None
    step_time = elapsed / s.timed_steps
    tokens_per_s = trainer.tokens_per_step / step_time
    loss_values = [float(x) for x in torch.stack(losses).float().cpu()]
    res = {
        "step_time_s": step_time,
        "tokens_per_step": trainer.tokens_per_step,
        **derived(tokens_per_s, shape, peak_flops),
        "trainer_flops_per_token": trainer.flops_per_token,
        "peak_mem_gib": peak_mem,
        "build_s": build_s,
        "warmup_s": warmup_s,
        "losses": loss_values,
        "loss_finite": all(math.isfinite(x) for x in loss_values),
        "bf16": trainer.bf16,
    }
    del trainer, losses
    free_memory(s.device)
    return res


def measure_shape(
    s: Settings, preset: str, data_dir: Path, work: Path, peak_flops: float | None, gpu_gib: float | None
) -> dict[str, Any]:
    layers = s.layers if s.layers is not None else (None if s.smoke else DEFAULT_LAYERS.get(preset))
    shape = shape_info(preset, layers, s.seq_len)
    out: dict[str, Any] = {"shape": shape, "variants": {}}
    name = f"{preset} ({shape['layers']} of {shape['full_layers']} layers)"
    for v in s.variants:
        base = {
            "layout": "1 rank (dp_replicate 1 x dp_shard 1 x tp 1 x cp 1 x pp 1)",
            "world_size": 1,
            "activation_checkpointing": v.activation_checkpointing,
            "compile": v.compile,
            "micro_batch": s.micro_batch,
            "seq_len": s.seq_len,
            "note": v.note,
            "memory_model_gib": memory_model_gib(preset, layers, s.micro_batch, s.seq_len, v.activation_checkpointing),
        }
        if gpu_gib is not None and shape["state_gib"] > gpu_gib:
            why = f"does not fit one GPU: {shape['state_gib']:.1f} GiB of state alone > {gpu_gib:.1f} GiB"
            out["variants"][v.name] = {**base, "skipped": why}
            print(f"[bench] {name} {v.name}: {why}", flush=True)
            continue
        print(f"[bench] {name} {v.name}: {v.note}", flush=True)
        cfg = run_config(s, preset, layers, v, data_dir, work)
        try:
            res = run_variant(s, cfg, shape, peak_flops)
        except Exception as e:  # an out-of-memory layout is a result, not a crash
            if not is_oom(e):
                raise
            res = {"error": "out of memory"}
        if "error" in res:
            free_memory(s.device)  # outside `except`: the traceback no longer pins the failed step's tensors
            print(f"[bench]   out of memory at micro batch {s.micro_batch} x seq {s.seq_len}", flush=True)
        else:
            mem = f", peak {res['peak_mem_gib']:.1f} GiB" if res["peak_mem_gib"] is not None else ""
            print(f"[bench]   {res['tokens_per_s_per_gpu']:,.0f} tokens/s/GPU, {res['step_time_s']:.4f} s/step{mem}")
        out["variants"][v.name] = {**base, **res}
    return out


# --------------------------------------------------------------------------- output


def print_tables(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    c = Console(width=None if Console().is_terminal else 170)
    t = Table(
        title=f"layouts on one {data['device']}: seq {data['settings']['seq_len']}, "
        f"micro batch {data['settings']['micro_batch']}"
    )
    cols = ("model", "variant", "tokens/s/GPU", "MFU", "TFLOP/s", "full shape at this MFU", "peak GiB", "model GiB")
    for col in (*cols, "step s", "note"):
        t.add_column(col, justify="left" if col in ("model", "variant", "note") else "right")
    for m in data["models"]:
        sh = m["shape"]
        name = f"{sh['preset']} {sh['layers']}/{sh['full_layers']}L"
        for vname, r in m["variants"].items():
            model_gib = f(r["memory_model_gib"]["total"], ".1f")
            if "tokens_per_s_per_gpu" not in r:
                t.add_row(name, vname, "-", "-", "-", "-", "-", model_gib, "-", r.get("skipped") or r.get("error", ""))
                continue
            t.add_row(
                name,
                vname,
                f"{r['tokens_per_s_per_gpu']:,.0f}",
                f(r["mfu"], ".1%"),
                f"{r['achieved_tflops_per_gpu']:.1f}",
                f(r["full_shape_tokens_per_s_per_gpu_at_same_mfu"], ",.0f"),
                f(r["peak_mem_gib"], ".1f"),
                model_gib,
                f"{r['step_time_s']:.4f}",
                r["note"],
            )
    c.print(t)
    ref = Table(title="torchtitan's published figures (full shapes, many GPUs: not the shapes above)")
    for col in ("model", "GPUs", "layout", "tokens/s/GPU", "MFU (bf16-equiv.)", "GiB", "how"):
        ref.add_column(col, justify="left" if col in ("model", "layout", "how") else "right")
    for r in data["torchtitan"]["figures"]:
        ref.add_row(
            r["model"],
            str(r["gpus"]),
            r["layout"],
            " - ".join(f"{x:,.0f}" for x in r["tokens_per_s_per_gpu"]),
            " - ".join(f(x, ".1%") for x in r["mfu_bf16_equivalent"]),
            " / ".join(f"{x:.1f}" for x in r["memory_gib"]),
            f"local batch {r['local_batch']}, AC {r['activation_checkpointing']}, {r['techniques']}",
        )
    c.print(ref)
    c.print(f"source: {data['torchtitan']['source']}", highlight=False)
    c.print(f"note: {data['note']}", highlight=False)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny preset on CPU, fp32, a few steps: the code path only")
    p.add_argument(
        "--preset", nargs="+", action="extend", help=f"model presets (default {' '.join(DEFAULT_PRESETS)}; smoke: tiny)"
    )
    p.add_argument(
        "--layers", type=int, help=f"blocks kept of each preset (default {DEFAULT_LAYERS}; smoke: the preset's)"
    )
    p.add_argument(
        "--variants",
        nargs="*",
        help=f"of {[v.name for v in VARIANTS]} (default {DEFAULT_VARIANTS}; smoke {SMOKE_VARIANTS})",
    )
    p.add_argument("--seq-len", type=int, help="sequence length (8192, torchtitan's; smoke 64)")
    p.add_argument("--micro-batch", type=int, help="sequences per step (1; smoke 2)")
    p.add_argument("--steps", type=int, help="timed steps per variant (10; smoke 2)")
    p.add_argument("--warmup", type=int, help="warm-up steps per variant, compile included (3; smoke 1)")
    p.add_argument("--loss-chunk-tokens", type=int, help="chunked cross-entropy (4096, the shipped configs'; smoke 48)")
    p.add_argument(
        "--data", type=Path, help="a prepared mltrain data dir (default: prepare the Python stdlib in a temp dir)"
    )
    p.add_argument(
        "--out", type=Path, help="result JSON (default bench/results/layouts-<date>.json; smoke: a temp file)"
    )
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> Settings:
    known = {v.name: v for v in VARIANTS}
    names = args.variants or (SMOKE_VARIANTS if args.smoke else DEFAULT_VARIANTS)
    if unknown := [n for n in names if n not in known]:
        raise SystemExit(f"--variants: unknown {unknown}; known: {sorted(known)}")
    presets = args.preset or (["tiny"] if args.smoke else DEFAULT_PRESETS)
    from mltrain.config import MODEL_PRESETS

    if unknown := [p for p in presets if p not in MODEL_PRESETS]:
        raise SystemExit(f"--preset: unknown {unknown}; known: {', '.join(MODEL_PRESETS)}")
    return Settings(
        smoke=args.smoke,
        device="cpu" if args.smoke else "cuda",
        presets=presets,
        layers=args.layers,
        seq_len=args.seq_len or (64 if args.smoke else 8192),
        micro_batch=args.micro_batch or (2 if args.smoke else 1),
        warmup_steps=args.warmup if args.warmup is not None else (1 if args.smoke else 3),
        timed_steps=args.steps or (2 if args.smoke else 10),
        loss_chunk_tokens=args.loss_chunk_tokens
        if args.loss_chunk_tokens is not None
        else (48 if args.smoke else 4096),
        variants=[known[n] for n in names],
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    s = settings(args)
    from mltrain.train.metrics import PEAK_BF16_FLOPS, device_peak_flops

    if s.device == "cuda":
        device_name = torch.cuda.get_device_name()
        gpu_gib: float | None = torch.cuda.get_device_properties(0).total_memory / 2**30
        peak = device_peak_flops(device_name)
    else:
        device_name, gpu_gib, peak = "cpu", None, None
    out = args.out or (
        default_out("layouts", True, device_name) if s.smoke else RESULTS_DIR / f"layouts-{today()}.json"
    )
    print(f"[bench] {device_name}: {ONE_GPU_NOTE}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="mltrain-bench-layouts-"))
    try:
        data_dir, data_source = args.data, f"{args.data} (mltrain TokenLoader)"
        if data_dir is None:  # real text: the Python standard library through mltrain's prepare
            nbytes, bpe = (300_000, 1024) if s.smoke else (2_000_000, 8192)
            vocab = min(model_config(p, 1).vocab_size for p in s.presets)
            data_dir = prepare_corpus(work / "data", nbytes, min(bpe, vocab), vocab)
            data_source = f"builtin:python-stdlib, {nbytes / 1e6:g} MB, byte-level BPE {min(bpe, vocab)}"
        models = [measure_shape(s, p, data_dir, work, peak, gpu_gib) for p in s.presets]
        data: dict[str, Any] = {
            "benchmark": "layouts",
            "mode": "smoke" if s.smoke else "full",
            "device": device_name,
            "env": environment(torch.device(s.device)),
            "note": ONE_GPU_NOTE,
            "peak_flops": peak,
            "peak_flops_source": "mltrain.train.metrics.PEAK_BF16_FLOPS (dense bf16, vendor data sheets)",
            "gpu_memory_gib": gpu_gib,
            "settings": {
                "seq_len": s.seq_len,
                "micro_batch": s.micro_batch,
                "warmup_steps": s.warmup_steps,
                "timed_steps": s.timed_steps,
                "loss_chunk_tokens": s.loss_chunk_tokens,
                "dtype": "fp32" if s.smoke else "bf16 autocast, fp32 weights and AdamW state",
                "data": data_source,
                "trainer": "mltrain.train.trainer.Trainer.train_step with a parallel: block of degree 1",
            },
            "flops_formula": "6*N + 12*L*H*Q*T (mltrain.model.flops)",
            "models": models,
            "torchtitan": {"source": TORCHTITAN_SOURCE, "figures": torchtitan_rows(PEAK_BF16_FLOPS["H100"])},
        }
        write_json(out, data)
        print_tables(data)
        print(f"[bench] wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
