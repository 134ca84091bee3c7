"""Training throughput, memory and numerics: Hugging Face Qwen2 vs mltrain, side by side, one GPU.

Both models get the same weights: a randomly initialised transformers `Qwen2ForCausalLM` (the
Qwen2.5-0.5B shape) is saved with `save_pretrained` into a temp dir; every variant then builds a
fresh model from that dir (HF: `from_pretrained`; mltrain: meta + `mltrain.model.hf.load_hf_weights`,
the interoperability import), a fresh fused AdamW (`mltrain.train.optim.build_optimizer`, the same
settings for both) and runs warm-up steps, then timed steps bracketed by CUDA events (no host sync
inside the timed loop). Every step is the trainer's: forward + loss, backward, grad-norm clip,
optimizer step, zero_grad.

Variants: hf_eager, hf_compile (whole-model torch.compile), mltrain (the shipped fast path from
configs/qwen2.5-0.5b.yaml: bf16 autocast, per-block compile, chunked cross-entropy), and levers
switched off or pushed: mltrain_eager (no compile), mltrain_nochunk (full logits), mltrain_mb<2B>
(bigger micro-batch, when it fits).

Numerics: HF eager and the mltrain fast path train N steps (default 200) from the same weights on
the same batch stream (mltrain's TokenLoader over real text, prepared here from the Python
standard library unless --data is given) with the same optimizer and LR schedule; the report is
the mean |loss_hf - loss_mltrain| after step 50.

    python bench/train_throughput.py            # one GPU; prints "no CUDA device: skipping" without
    python bench/train_throughput.py --smoke    # tiny model on CPU, fp32: the same code paths, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _common import (
    ROOT,
    SKIP_LINE,
    SMOKE_MODEL,
    default_out,
    environment,
    measure_matmul_peak,
    prepare_corpus,
    sync,
    write_json,
)

FAST_PATH_CONFIG = ROOT / "configs" / "qwen2.5-0.5b.yaml"
TARGETS = {"speedup_vs_hf_compile": 1.4, "peak_mem_ratio_vs_hf_eager": 0.6, "numerics_mean_abs_loss_diff": 0.02}


@dataclass
class Settings:
    """Everything that differs between a full (GPU) and a smoke (CPU) run."""

    device: torch.device
    smoke: bool
    seq_len: int
    micro_batch: int
    big_micro_batch: int
    bf16: bool
    compile: bool
    loss_chunk_tokens: int
    warmup_steps: int
    timed_steps: int
    numerics_steps: int
    numerics_skip: int
    lr: float
    variants: list[str] = field(default_factory=list)


@dataclass
class Variant:
    name: str
    family: str  # "hf", "mltrain" (model + the trainer's step, here) or "trainer" (mltrain's Trainer itself)
    compile: str  # "none", "full" (torch.compile(model)), "blocks" (apply_compile), "blocks+loss"
    loss_chunk_tokens: int = 0
    micro_batch: int = 8
    note: str = ""


# --------------------------------------------------------------------------- models


def model_config(smoke: bool) -> Any:
    from mltrain.config import ModelConfig

    return ModelConfig(**SMOKE_MODEL) if smoke else ModelConfig(preset="qwen2.5-0.5b")


def save_reference_weights(cfg: Any, out_dir: Path, device: torch.device, seed: int) -> None:
    """A randomly initialised HF Qwen2 (its own init), saved as the shared starting point."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mltrain.model.hf import hf_config_dict

    hf_cfg = Qwen2Config(**hf_config_dict(cfg, torch.float32))
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(hf_cfg, attn_implementation="sdpa", dtype=torch.float32)
    model.save_pretrained(out_dir)
    del model


def build_hf(weights: Path, device: torch.device) -> torch.nn.Module:
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(weights, attn_implementation="sdpa", dtype=torch.float32)
    return model.to(device).train()


def build_mltrain(weights: Path, cfg: Any, device: torch.device) -> torch.nn.Module:
    """mltrain's Transformer through the HF import (meta -> to_empty -> load_hf_weights)."""
    from mltrain.model.hf import load_hf_weights
    from mltrain.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.rope.reset_parameters()
    load_hf_weights(model, weights)
    return model.train()


def loss_fn(variant: Variant, model: torch.nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(inputs, targets) -> mean CE; targets are already shifted (mltrain's loader layout).

    HF gets `shift_labels`, so its own loss path (fp32 upcast of the full logits) sees exactly
    the same targets as mltrain's.
    """
    from mltrain.train.parallel import apply_compile

    fwd = torch.compile(model) if variant.compile == "full" else model
    if variant.family == "hf":
        return lambda x, y: fwd(input_ids=x, labels=y, shift_labels=y).loss
    if variant.compile in ("blocks", "blocks+loss"):
        apply_compile(model)  # the trainer's per-block compile (fullgraph=True)
    if variant.compile == "blocks+loss":
        # Not in src yet: also compile one chunk of head matmul + fp32 cross-entropy (fuses the upcast and
        # the log-softmax; the instance attribute shadows the method that _chunked_loss checkpoints).
        model._chunk_ce_sum = torch.compile(model._chunk_ce_sum, fullgraph=True)
    k = variant.loss_chunk_tokens
    return lambda x, y: fwd(x, y, loss_chunk_tokens=k)


def train_config(s: Settings, max_steps: int) -> Any:
    from mltrain.config import TrainConfig

    return TrainConfig(
        lr=s.lr, warmup_steps=max(1, max_steps // 10), max_steps=max_steps, weight_decay=0.1, grad_clip=1.0
    )


class Stepper:
    """One trainer step (autocast forward, backward, clip, AdamW) for a built model; no host syncs."""

    def __init__(self, s: Settings, variant: Variant, model: torch.nn.Module, max_steps: int) -> None:
        from mltrain.train.optim import build_optimizer

        self.s, self.model = s, model
        self.tc = train_config(s, max_steps)
        self.loss = loss_fn(variant, model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = build_optimizer(model, self.tc, s.device)  # fused AdamW on CUDA, foreach on CPU
        self.n = 0

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.s.bf16:
            return torch.autocast(device_type=self.s.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from mltrain.train.optim import lr_at, set_lr

        self.n += 1
        set_lr(self.opt, lr_at(self.n, self.tc))
        with self.autocast():
            loss = self.loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.tc.grad_clip, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()


# --------------------------------------------------------------------------- data


def batch_stream(
    data_dir: Path | None, vocab: int, seq_len: int, micro_batch: int, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """mltrain's TokenLoader over a prepared dir (real text); a fixed random-token stream without one."""
    if data_dir is not None:
        from mltrain.data.loader import TokenLoader

        loader = TokenLoader(data_dir, "train", seq_len, micro_batch, 0, 1, seed)
        while True:
            x, y = loader.next_batch()
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    g = torch.Generator().manual_seed(seed)
    while True:
        w = torch.randint(0, vocab, (micro_batch, seq_len + 1), generator=g)
        yield w[:, :-1].contiguous().to(device), w[:, 1:].contiguous().to(device)


# --------------------------------------------------------------------------- one variant


def spec_peak(device: torch.device) -> float | None:
    """Data-sheet dense bf16 peak of this GPU (989.4 TFLOP/s for H100/H200); None on CPU or unknown GPUs."""
    if device.type != "cuda":
        return None
    from mltrain.train.metrics import device_peak_flops

    return device_peak_flops(torch.cuda.get_device_name(device))


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    torch._dynamo.reset()


def run_variant(
    s: Settings,
    variant: Variant,
    cfg: Any,
    weights: Path,
    data_dir: Path | None,
    flops_per_token: float,
    measured_peak: float | None,
    work: Path,
) -> dict[str, Any]:
    """Build fresh, warm up, time `timed_steps` steps; tokens/s, MFU, peak memory."""
    free_memory(s.device)
    extra: dict[str, Any] = {}
    if variant.family == "trainer":
        trainer, extra = build_trainer(s, variant, cfg, weights, data_dir, work)

        def step(_i: int) -> torch.Tensor:
            return trainer.train_step()[0]  # its own loader, H2D copy, autocast, clip, AdamW

        owner: Any = trainer
    else:
        model = build_hf(weights, s.device) if variant.family == "hf" else build_mltrain(weights, cfg, s.device)
        stepper = Stepper(s, variant, model, max_steps=10_000)
        # A few distinct batches resident on the device: the timed loop measures the model, not the loader
        # (bench/loader.py shows the loader is far ahead; mltrain_trainer includes it); real text.
        stream = batch_stream(data_dir, cfg.vocab_size, s.seq_len, variant.micro_batch, 0, s.device)
        batches = [next(stream) for _ in range(4)]

        def step(i: int) -> torch.Tensor:
            return stepper(*batches[i % len(batches)])

        owner = (stepper, model, batches)
    t_build = time.perf_counter()
    for i in range(s.warmup_steps):
        step(i)
    sync(s.device)
    warmup_s = time.perf_counter() - t_build
    losses = []
    if s.device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(s.timed_steps):
            losses.append(step(i))
        end.record()
        end.synchronize()
        elapsed = start.elapsed_time(end) / 1e3
        peak_mem = torch.cuda.max_memory_allocated(s.device) / 2**30
    else:
        t0 = time.perf_counter()
        for i in range(s.timed_steps):
            losses.append(step(i))
        elapsed = time.perf_counter() - t0
        peak_mem = None
    step_time = elapsed / s.timed_steps
    tokens = variant.micro_batch * s.seq_len
    tps = tokens / step_time
    last_loss = float(torch.stack(losses).float()[-1])
    res = {
        "family": variant.family,
        "compile": variant.compile,
        "loss_chunk_tokens": variant.loss_chunk_tokens,
        "micro_batch": variant.micro_batch,
        "seq_len": s.seq_len,
        "bf16": s.bf16,
        "note": variant.note,
        **extra,
        "tokens_per_s": tps,
        "step_time_s": step_time,
        "timed_steps": s.timed_steps,
        "warmup_steps": s.warmup_steps,
        "warmup_s": warmup_s,
        "mfu": tps * flops_per_token / spec_peak(s.device) if spec_peak(s.device) else None,
        "mfu_vs_measured_peak": tps * flops_per_token / measured_peak if measured_peak else None,
        "achieved_tflops": tps * flops_per_token / 1e12,
        "peak_mem_gib": peak_mem,
        "last_loss": last_loss,
        "loss_finite": math.isfinite(last_loss),
    }
    del step, owner
    free_memory(s.device)
    return res


def build_trainer(
    s: Settings, variant: Variant, cfg: Any, weights: Path, data_dir: Path, work: Path
) -> tuple[Any, dict[str, Any]]:
    """mltrain's own Trainer on the shipped config (configs/qwen2.5-0.5b.yaml), starting from `weights`
    via model.init_from: what `mltrain train` runs on this one device."""
    from mltrain.config import RunConfig, load_run_config
    from mltrain.train.distributed import init_distributed
    from mltrain.train.trainer import Trainer

    d = load_run_config(FAST_PATH_CONFIG).model_dump(mode="json")
    d["name"] = "bench-trainer"
    d["base_dir"] = str(work / "trainer")
    d["model"] = {**cfg.model_dump(mode="json"), "preset": None, "init_from": str(weights)}
    d["data"]["dir"] = str(data_dir)
    d["data"]["sources"] = ["builtin:python-stdlib"]
    d["train"].update(
        device=s.device.type,
        seq_len=s.seq_len,
        micro_batch_size=variant.micro_batch,
        loss_chunk_tokens=variant.loss_chunk_tokens,
        tensorboard=False,
    )
    if s.smoke:  # smoke: fp32, compile only when asked; a GPU run keeps the config's dtype and compile
        d["train"].update(dtype="bf16" if s.bf16 else "fp32", compile=variant.compile != "none")
    rc = RunConfig.model_validate(d)
    trainer = Trainer(rc, init_distributed(rc.train.device))
    autocast = isinstance(trainer._autocast(), torch.autocast)
    extra: dict[str, Any] = {
        "trainer_parallel": rc.train.parallel,
        "trainer_dtype": rc.train.dtype,
        "trainer_compile": rc.train.compile,
        "trainer_bf16": trainer.bf16,
        "trainer_bf16_autocast_active": autocast,
    }
    if trainer.bf16 and not autocast and trainer.info.world_size == 1:
        extra["warning"] = (
            f"train.parallel={rc.train.parallel} on one device: no FSDP mixed precision and no "
            "autocast, so this trainer computes in fp32 (see docs/performance.md)"
        )
        print(f"[bench]   WARNING: {extra['warning']}", flush=True)
    return trainer, extra


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


# --------------------------------------------------------------------------- numerics


def run_numerics(s: Settings, cfg: Any, weights: Path, data_dir: Path | None, fast: Variant) -> dict[str, Any]:
    """HF eager vs the mltrain fast path, N steps from the same weights and batches."""
    curves = {}
    for variant in (Variant("hf_eager", "hf", "none", micro_batch=s.micro_batch), fast):
        free_memory(s.device)
        model = build_hf(weights, s.device) if variant.family == "hf" else build_mltrain(weights, cfg, s.device)
        step = Stepper(s, variant, model, max_steps=s.numerics_steps)
        stream = batch_stream(data_dir, cfg.vocab_size, s.seq_len, s.micro_batch, 1234, s.device)
        losses = [step(*next(stream)) for _ in range(s.numerics_steps)]
        curves[variant.name] = torch.stack(losses).float().cpu()  # one host sync, at the end
        del step, model
    free_memory(s.device)
    hf, ml = curves["hf_eager"], curves[fast.name]
    diff = (hf - ml).abs()
    after = diff[s.numerics_skip :]
    return {
        "steps": s.numerics_steps,
        "compare_after_step": s.numerics_skip,
        "reference": "hf_eager",
        "candidate": fast.name,
        "mean_abs_loss_diff": float(after.mean()),
        "max_abs_loss_diff": float(after.max()),
        "first_step_abs_diff": float(diff[0]),
        "first_loss_hf": float(hf[0]),
        "first_loss_mltrain": float(ml[0]),
        "final_loss_hf": float(hf[-1]),
        "final_loss_mltrain": float(ml[-1]),
        "all_finite": bool(torch.isfinite(hf).all() and torch.isfinite(ml).all()),
        "loss_hf": [round(float(v), 5) for v in hf],
        "loss_mltrain": [round(float(v), 5) for v in ml],
    }


# --------------------------------------------------------------------------- profile


_KERNEL_GROUPS = [
    ("matmul", re.compile(r"gemm|matmul|cutlass|xmma|nvjet|cublas|aten::(mm|addmm|bmm)$|linear", re.I)),
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn", re.I)),
    ("optimizer", re.compile(r"adam|multi_tensor|foreach", re.I)),
    ("loss", re.compile(r"cross_entropy|log_softmax|nll", re.I)),
    ("triton (compiled fusions)", re.compile(r"triton", re.I)),
]


def run_profile(s: Settings, variant: Variant, cfg: Any, weights: Path, out_txt: Path) -> dict[str, Any]:
    """torch.profiler over a few steps: top kernels by device time, written next to the JSON."""
    from torch.profiler import ProfilerActivity, profile

    free_memory(s.device)
    model = build_hf(weights, s.device) if variant.family == "hf" else build_mltrain(weights, cfg, s.device)
    step = Stepper(s, variant, model, max_steps=10_000)
    stream = batch_stream(None, cfg.vocab_size, s.seq_len, variant.micro_batch, 0, s.device)
    batch = next(stream)
    for _ in range(max(2, s.warmup_steps)):
        step(*batch)
    sync(s.device)
    cuda = s.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    n = 3
    with profile(activities=acts) as prof:
        for _ in range(n):
            step(*batch)
        sync(s.device)
    sort_key = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_key, row_limit=40)
    out_txt.write_text(f"# {variant.name}: {n} steps, sorted by {sort_key}\n{table}\n")
    events = [e for e in prof.key_averages() if (e.self_device_time_total if cuda else e.self_cpu_time_total) > 0]
    total = sum((e.self_device_time_total if cuda else e.self_cpu_time_total) for e in events) or 1.0
    groups: dict[str, float] = {}
    top = []
    for e in sorted(events, key=lambda e: -(e.self_device_time_total if cuda else e.self_cpu_time_total)):
        t = e.self_device_time_total if cuda else e.self_cpu_time_total
        grp = next((g for g, rx in _KERNEL_GROUPS if rx.search(e.key)), "other")
        groups[grp] = groups.get(grp, 0.0) + t
        if len(top) < 15:
            top.append({"name": e.key[:120], "share": t / total, "ms_per_step": t / 1e3 / n, "group": grp})
    del step, model
    free_memory(s.device)
    return {
        "variant": variant.name,
        "steps": n,
        "file": out_txt.name,
        "top": top,
        "share_by_group": {g: t / total for g, t in sorted(groups.items(), key=lambda kv: -kv[1])},
    }


# --------------------------------------------------------------------------- main


def variants_for(s: Settings) -> list[Variant]:
    """HF baselines, the shipped fast path, and one lever changed at a time. On CPU (smoke) the compile
    variants only run with --compile; `s.compile` False means the fast path runs uncompiled."""
    b, k, big = s.micro_batch, s.loss_chunk_tokens, s.big_micro_batch
    blocks = "blocks" if s.compile else "none"
    all_v = [
        Variant("hf_eager", "hf", "none", micro_batch=b, note="transformers Qwen2, SDPA"),
        Variant("hf_compile", "hf", "full", micro_batch=b, note="torch.compile(whole HF model)"),
        Variant("mltrain", "mltrain", blocks, k, b, note="shipped fast path (configs/qwen2.5-0.5b.yaml)"),
        Variant("mltrain_trainer", "trainer", blocks, k, b, note="mltrain Trainer.train_step on the shipped config"),
        Variant("mltrain_eager", "mltrain", "none", k, b, note="fast path without compile"),
        Variant("mltrain_nochunk", "mltrain", blocks, 0, b, note="fast path with full logits"),
        Variant("mltrain_compile_loss", "mltrain", "blocks+loss", k, b, note="+ compiled loss chunk (not in src)"),
        Variant("mltrain_compile_full", "mltrain", "full", k, b, note="torch.compile(whole model) (not in src)"),
        Variant(f"mltrain_mb{big}", "mltrain", blocks, k, big, note="fast path, bigger micro-batch"),
    ]
    if s.smoke and not s.compile:  # compile variants are opt-in on CPU: slow, and they need a C++ compiler
        all_v = [v for v in all_v if v.compile == "none" or v.name == "mltrain"]
        all_v = [v for v in all_v if v.name not in ("mltrain_eager",)]  # identical to mltrain here
    if s.variants:
        known = {v.name for v in all_v}
        unknown = set(s.variants) - known
        if unknown:
            raise SystemExit(f"--variants: unknown {sorted(unknown)}; known: {sorted(known)}")
        all_v = [v for v in all_v if v.name in s.variants]
    return all_v


def settings(args: argparse.Namespace) -> Settings:
    from mltrain.config import load_run_config

    tc = load_run_config(FAST_PATH_CONFIG).train  # the fast path is whatever the shipped config says
    if args.smoke:
        n = args.numerics_steps if args.numerics_steps is not None else 30
        return Settings(
            device=torch.device("cpu"),
            smoke=True,
            seq_len=args.seq_len or 64,
            micro_batch=args.micro_batch or 2,
            big_micro_batch=2 * (args.micro_batch or 2),
            bf16=args.bf16,
            compile=args.compile,
            loss_chunk_tokens=48,
            warmup_steps=args.warmup or 1,
            timed_steps=args.steps or 3,
            numerics_steps=n,
            numerics_skip=min(10, n // 2),
            lr=3e-3,
            variants=args.variants or [],
        )
    mb = args.micro_batch or tc.micro_batch_size
    n = args.numerics_steps if args.numerics_steps is not None else 200
    return Settings(
        device=torch.device("cuda"),
        smoke=False,
        seq_len=args.seq_len or tc.seq_len,
        micro_batch=mb,
        big_micro_batch=2 * mb,
        bf16=tc.dtype in ("bf16", "auto"),
        compile=tc.compile,
        loss_chunk_tokens=tc.loss_chunk_tokens,
        warmup_steps=args.warmup or 10,
        timed_steps=args.steps or 30,
        numerics_steps=n,
        numerics_skip=min(50, n // 2),
        lr=tc.lr,
        variants=args.variants or [],
    )


def merge_previous(
    path: Path, results: dict[str, Any], numerics: dict[str, Any] | None, s: Settings, device_name: str
) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Fold an earlier run's variants (and numerics, when this run has none) into this one, so a long
    benchmark can be split over several commands and still give one results JSON."""
    if not path.exists():
        return results, numerics, {"path": str(path), "variants": [], "note": "did not exist"}
    old = json.loads(path.read_text())
    mismatch = [
        f"{k}: {a!r} vs {b!r}"
        for k, a, b in (
            ("device", old.get("device"), device_name),
            ("mode", old.get("mode"), "smoke" if s.smoke else "full"),
            ("seq_len", old.get("settings", {}).get("seq_len"), s.seq_len),
            ("micro_batch", old.get("settings", {}).get("micro_batch"), s.micro_batch),
        )
        if a != b
    ]
    if mismatch:
        raise SystemExit(f"--merge {path}: not the same benchmark set-up ({'; '.join(mismatch)})")
    kept = {k: v for k, v in old.get("variants", {}).items() if k not in results}
    info = {"path": str(path), "variants": sorted(kept), "time_utc": old.get("env", {}).get("time_utc")}
    if numerics is None and old.get("numerics"):
        numerics = old["numerics"]
        info["numerics"] = True
    return {**kept, **results}, numerics, info


def summarise(results: dict[str, dict[str, Any]], s: Settings) -> dict[str, Any]:
    ok = {k: v for k, v in results.items() if "error" not in v}
    ours = {k: v for k, v in ok.items() if v["family"] in ("mltrain", "trainer")}
    out: dict[str, Any] = {
        "best_mltrain_variant": None,
        "speedup_vs_hf_eager": None,
        "speedup_vs_hf_compile": None,
        "peak_mem_ratio_vs_hf_eager": None,
        "peak_mem_ratio_variant": None,
    }
    if ours:
        best = max(ours, key=lambda k: ours[k]["tokens_per_s"])
        out["best_mltrain_variant"] = best
        if "hf_eager" in ok:
            out["speedup_vs_hf_eager"] = ours[best]["tokens_per_s"] / ok["hf_eager"]["tokens_per_s"]
        if "hf_compile" in ok:
            out["speedup_vs_hf_compile"] = ours[best]["tokens_per_s"] / ok["hf_compile"]["tokens_per_s"]
        same_mb = [k for k in ("mltrain", "mltrain_eager") if k in ours and ours[k]["micro_batch"] == s.micro_batch]
        if same_mb and "hf_eager" in ok and ok["hf_eager"]["peak_mem_gib"]:
            k = same_mb[0]
            out["peak_mem_ratio_variant"] = k
            out["peak_mem_ratio_vs_hf_eager"] = ours[k]["peak_mem_gib"] / ok["hf_eager"]["peak_mem_gib"]
    return out


def targets_met(summary: dict[str, Any], numerics: dict[str, Any] | None) -> dict[str, bool | None]:
    def le(x: float | None, t: float) -> bool | None:
        return None if x is None else bool(x <= t)

    sp = summary.get("speedup_vs_hf_compile")
    return {
        "speedup_vs_hf_compile>=1.4": None if sp is None else bool(sp >= TARGETS["speedup_vs_hf_compile"]),
        "peak_mem_ratio_vs_hf_eager<=0.6": le(
            summary.get("peak_mem_ratio_vs_hf_eager"), TARGETS["peak_mem_ratio_vs_hf_eager"]
        ),
        "numerics_mean_abs_loss_diff<0.02": None
        if not numerics
        else bool(numerics["mean_abs_loss_diff"] < TARGETS["numerics_mean_abs_loss_diff"]),
    }


def print_table(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(x: Any, fmt: str) -> str:
        return "-" if x is None else format(x, fmt)

    t = Table(
        title=f"training throughput: {data['model']['name']}, seq {data['settings']['seq_len']}, {data['device']}"
    )
    for col in (
        "variant",
        "micro-batch",
        "tokens/s",
        "MFU (spec peak)",
        "MFU (measured)",
        "step s",
        "peak GiB",
        "note",
    ):
        t.add_column(col, justify="left" if col in ("variant", "note") else "right")
    for name, r in data["variants"].items():
        if "error" in r:
            t.add_row(name, str(r.get("micro_batch", "")), "-", "-", "-", "-", "-", r["error"])
            continue
        t.add_row(
            name,
            str(r["micro_batch"]),
            f"{r['tokens_per_s']:,.0f}",
            f(r["mfu"], ".1%"),
            f(r["mfu_vs_measured_peak"], ".1%"),
            f"{r['step_time_s']:.4f}",
            f(r["peak_mem_gib"], ".1f"),
            r["note"],
        )
    c = Console(width=None if Console().is_terminal else 160)
    c.print(t)
    sm = data["summary"]
    c.print(
        f"best mltrain variant: {sm['best_mltrain_variant']} | speedup vs HF eager {f(sm['speedup_vs_hf_eager'], '.2f')}x"
        f" | vs HF compile {f(sm['speedup_vs_hf_compile'], '.2f')}x | peak memory vs HF eager "
        f"{f(sm['peak_mem_ratio_vs_hf_eager'], '.2f')}x ({sm['peak_mem_ratio_variant']})"
    )
    if data.get("numerics"):
        n = data["numerics"]
        c.print(
            f"numerics over {n['steps']} steps: mean |loss_hf - loss_mltrain| after step "
            f"{n['compare_after_step']} = {n['mean_abs_loss_diff']:.5f} (max {n['max_abs_loss_diff']:.5f}); "
            f"loss {n['first_loss_hf']:.3f} -> {n['final_loss_hf']:.3f} (HF), {n['final_loss_mltrain']:.3f} (mltrain)"
        )
    c.print(f"targets: {data['targets_met']}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, fp32: check the code paths in seconds")
    p.add_argument("--compile", action="store_true", help="smoke only: also run the torch.compile variants on CPU")
    p.add_argument(
        "--bf16", action="store_true", help="smoke only: bf16 autocast on CPU (a preview of the GPU numerics)"
    )
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/<gpu>-<date>.json; smoke: a temp file)")
    p.add_argument(
        "--data",
        type=Path,
        help="a prepared mltrain data dir for the real-text stream "
        "(default: prepare ~4 MB of the Python stdlib into a temp dir; smoke: 0.3 MB)",
    )
    p.add_argument("--variants", nargs="*", help="run only these variants")
    p.add_argument("--steps", type=int, help="timed steps per variant (30; smoke 3)")
    p.add_argument("--warmup", type=int, help="warm-up steps per variant, compile included (10; smoke 1)")
    p.add_argument("--micro-batch", type=int, help="micro-batch (the config's, 8; smoke 2)")
    p.add_argument("--seq-len", type=int, help="sequence length (the config's, 2048; smoke 64)")
    p.add_argument(
        "--numerics-steps", type=int, help="steps of the HF-vs-mltrain loss comparison (200; smoke 30; 0 = off)"
    )
    p.add_argument(
        "--numerics-variant",
        default="mltrain",
        help="the mltrain variant compared with HF eager (default: the fast path)",
    )
    p.add_argument("--profile", action="store_true", help="torch.profiler top kernels of the best mltrain variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--merge",
        type=Path,
        help="fold the variants (and numerics) of an earlier result JSON of the same set-up into this one "
        "(split a long run over several commands: use the same path for --out)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(SKIP_LINE)
        return 0
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    from mltrain.model.flops import flops_per_token

    s = settings(args)
    candidates = {v.name: v for v in variants_for(dataclasses.replace(s, variants=[])) if v.family == "mltrain"}
    if args.numerics_variant not in candidates:
        raise SystemExit(f"--numerics-variant {args.numerics_variant!r}: pick one of {sorted(candidates)}")
    cfg = model_config(s.smoke)
    fpt = flops_per_token(cfg, s.seq_len)
    device_name = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "cpu"
    out = args.out or default_out("", s.smoke, device_name)
    if s.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    measured_peak = measure_matmul_peak(
        s.device, n=8192 if s.device.type == "cuda" else 512, iters=50 if s.device.type == "cuda" else 20
    )
    print(
        f"[bench] {device_name}: measured {'bf16' if s.device.type == 'cuda' else 'fp32'} matmul peak "
        f"{measured_peak / 1e12:.1f} TFLOP/s; {fpt / 1e9:.3f} GFLOP/token",
        flush=True,
    )

    work = Path(tempfile.mkdtemp(prefix="mltrain-bench-train-"))
    try:
        weights = work / "hf-init"
        save_reference_weights(cfg, weights, s.device, args.seed)
        data_dir, data_source = args.data, None
        if data_dir is None:  # real text by default: the Python standard library through mltrain's prepare
            nbytes, bpe = (300_000, cfg.vocab_size) if s.smoke else (4_000_000, 8192)
            data_dir = prepare_corpus(work / "data", nbytes, bpe, cfg.vocab_size)
            data_source = (
                f"builtin:python-stdlib, {nbytes / 1e6:g} MB, byte-level BPE {bpe} (mltrain prepare + TokenLoader)"
            )
        data_source = data_source or f"{data_dir} (mltrain TokenLoader)"

        results: dict[str, dict[str, Any]] = {}
        variants = variants_for(s)
        for v in variants:
            print(
                f"[bench] {v.name}: micro-batch {v.micro_batch}, compile {v.compile}, "
                f"loss_chunk_tokens {v.loss_chunk_tokens}",
                flush=True,
            )
            try:
                results[v.name] = run_variant(s, v, cfg, weights, data_dir, fpt, measured_peak, work)
                r = results[v.name]
                print(
                    f"[bench]   {r['tokens_per_s']:,.0f} tokens/s, {r['step_time_s']:.4f} s/step"
                    + (f", peak {r['peak_mem_gib']:.1f} GiB" if r["peak_mem_gib"] is not None else ""),
                    flush=True,
                )
            except Exception as e:  # an OOM at the big micro-batch is a result, not a crash
                if not is_oom(e):
                    raise
                results[v.name] = {"family": v.family, "micro_batch": v.micro_batch, "error": "out of memory"}
                print(f"[bench]   out of memory at micro-batch {v.micro_batch}", flush=True)
            free_memory(s.device)  # outside `except`: the traceback no longer pins the failed step's tensors

        fast = candidates[args.numerics_variant]
        numerics = None
        if s.numerics_steps > 0:
            print(f"[bench] numerics: hf_eager vs {fast.name}, {s.numerics_steps} steps on {data_source}", flush=True)
            numerics = run_numerics(s, cfg, weights, data_dir, fast)
            numerics["data"] = data_source

        merged_from = None
        if args.merge is not None:
            results, numerics, merged_from = merge_previous(args.merge, results, numerics, s, device_name)
        summary = summarise(results, s)
        data: dict[str, Any] = {
            "benchmark": "train_throughput",
            "mode": "smoke" if s.smoke else "full",
            "device": device_name,
            "env": environment(s.device),
            "model": {"name": "tiny-qwen2 (smoke)" if s.smoke else "qwen2.5-0.5b", **cfg.model_dump(mode="json")},
            "settings": {
                "seq_len": s.seq_len,
                "micro_batch": s.micro_batch,
                "bf16_autocast": s.bf16,
                "fast_path_config": str(FAST_PATH_CONFIG.relative_to(ROOT)),
                "loss_chunk_tokens": s.loss_chunk_tokens,
                "warmup_steps": s.warmup_steps,
                "timed_steps": s.timed_steps,
                "optimizer": "AdamW (mltrain build_optimizer: fused on CUDA), "
                "lr warmup+cosine, wd 0.1 on matrices, grad clip 1.0",
                "attention": "SDPA",
                "throughput_batches": "4 device-resident batches, cycled",
            },
            "flops_per_token": fpt,
            "flops_formula": "6*N + 12*L*H*Q*T (N: matmul params incl. the tied lm_head; mltrain.train.metrics)",
            "peak_flops_spec": spec_peak(s.device),
            "peak_flops_measured_matmul": measured_peak,
            "variants": results,
            **summary,
            "summary": summary,
            "numerics": numerics,
            "merged_from": merged_from,
        }
        data["targets"] = TARGETS
        data["targets_met"] = targets_met(summary, numerics)
        if args.profile and summary["best_mltrain_variant"]:
            everything = variants_for(dataclasses.replace(s, variants=[]))
            best = next(v for v in everything if v.name == summary["best_mltrain_variant"])
            data["profile"] = run_profile(s, best, cfg, weights, out.with_name(out.stem + "-profile.txt"))
        write_json(out, data)
        print_table(data)
        print(f"[bench] wrote {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
