"""Trainer overhead: mltrain's training loop vs a bare PyTorch loop, same model, data and optimizer.

One process, CPU, the small-model recipe of configs/shakespeare-char.yaml (~0.8M parameters,
64-token context, micro-batch 12, char-level). Both sides are built by mltrain's own functions
(`build_model` with the run seed, `build_optimizer`, `TokenLoader`, `lr_at`), so they do the same
arithmetic; the check `same_losses` compares their per-step losses bit for bit. The bare loop is the
minimum any trainer does per step: set the LR, next batch, forward + loss, backward, clip, step,
zero_grad, and read the loss every `log_every` steps. The trainer side is `train_loop` itself
(`Trainer.train_step`, stop-flag checks, watchdog beat, checkpoint poll, loss window, logging)
with periodic eval and checkpoints off.

Each pair builds both sides from scratch and warms both up, then times `--steps` steps of each in
interleaved blocks of `--block` steps (bare, trainer, trainer, bare, ...), so a change in machine
load hits both alike. The result is the median over pairs of the ratio trainer/bare of process CPU
time per step (wall time is recorded too): on a machine shared with other work, CPU time counts
what the loop itself costs while wall time also counts waiting for a core.

    python bench/overhead.py                     # writes bench/results/cpu-overhead-<date>.json
    python bench/overhead.py --profile           # + cProfile of both loops (where the time goes)
    python bench/overhead.py --smoke             # seconds; result to a temp file
    python bench/overhead.py --text input.txt    # a real text instead of the generated stand-in
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, default_out, environment, stand_in_text, write_json

CONFIG = ROOT / "configs" / "shakespeare-char.yaml"
TARGET_MAX_RATIO = 1.02


def make_config(work: Path, text: str | None, chars: int, seq_len: int | None, batch: int | None) -> Any:
    import yaml

    from mltrain.config import RunConfig
    from mltrain.data.prepare import prepare_data

    body = Path(text).read_text(encoding="utf-8") if text else stand_in_text(chars)
    cut = int(len(body) * 0.9)
    (work / "train.txt").write_text(body[:cut], encoding="utf-8")
    (work / "val.txt").write_text(body[cut:], encoding="utf-8")
    raw = yaml.safe_load(CONFIG.read_text())
    raw["base_dir"] = str(work / "base")
    raw["data"].update(sources=[str(work / "train.txt")], val_sources=[str(work / "val.txt")], dir=str(work / "data"))
    raw["train"].update(
        device="cpu", eval_every=0, tensorboard=False, max_steps=100_000, warmup_steps=1
    )  # max_steps moves per block below
    if seq_len:
        raw["train"]["seq_len"] = seq_len
        raw["model"]["max_seq_len"] = max(raw["model"]["max_seq_len"], seq_len)
    if batch:
        raw["train"]["micro_batch_size"] = batch
    raw["checkpoint"].update(every_steps=0, resume=False)
    cfg = RunConfig.model_validate(raw)
    prepare_data(cfg)
    return cfg


# --------------------------------------------------------------------------- the two loops


class Bare:
    """The bare PyTorch loop over the same pieces."""

    def __init__(self, cfg: Any) -> None:
        from mltrain.data.loader import TokenLoader
        from mltrain.train.optim import build_optimizer
        from mltrain.train.trainer import build_model

        self.cfg = cfg
        tc = cfg.train
        dev = torch.device("cpu")
        self.model = build_model(cfg, dev)
        self.model.train()
        self.opt = build_optimizer(self.model, tc, dev)
        self.loader = TokenLoader(cfg.data.dir, "train", tc.seq_len, tc.micro_batch_size, 0, 1, cfg.seed)
        self.step = 0
        self.losses: list[float] = []

    def run(self, until: int, record: bool = False) -> None:
        from mltrain.train.optim import lr_at, set_lr

        tc = self.cfg.train
        model, opt, loader = self.model, self.opt, self.loader
        params = list(model.parameters())
        while self.step < until:
            self.step += 1
            set_lr(opt, lr_at(self.step, tc))
            x, y = loader.next_batch()
            loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if record:
                self.losses.append(loss.item())
            elif self.step % tc.log_every == 0:
                loss.item()


class GPT(torch.nn.Module):
    """A plain GPT-2 style model of the same width/depth (LayerNorm, GELU MLP 4x, learned positions,
    tied head): the reference for "is mltrain's model itself slower than a GPT of its size"."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, ctx: int) -> None:
        super().__init__()
        self.heads = heads
        self.wte = torch.nn.Embedding(vocab, dim)
        self.wpe = torch.nn.Embedding(ctx, dim)
        self.blocks = torch.nn.ModuleList(
            torch.nn.ModuleDict(
                {
                    "ln1": torch.nn.LayerNorm(dim, bias=False),
                    "qkv": torch.nn.Linear(dim, 3 * dim, bias=False),
                    "proj": torch.nn.Linear(dim, dim, bias=False),
                    "ln2": torch.nn.LayerNorm(dim, bias=False),
                    "fc": torch.nn.Linear(dim, 4 * dim, bias=False),
                    "out": torch.nn.Linear(4 * dim, dim, bias=False),
                }
            )
            for _ in range(layers)
        )
        self.ln_f = torch.nn.LayerNorm(dim, bias=False)
        for p in self.parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, 0.0, 0.02)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        B, T = x.shape
        h = self.wte(x) + self.wpe(torch.arange(T))
        for b in self.blocks:
            q, k, v = b["qkv"](b["ln1"](h)).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, -1)
            h = h + b["proj"](a)
            h = h + b["out"](F.gelu(b["fc"](b["ln2"](h))))
        logits = F.linear(self.ln_f(h), self.wte.weight)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())


class PlainGPT(Bare):
    """The bare loop with the plain GPT instead of mltrain's model (same optimizer, data, schedule)."""

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        from mltrain.train.optim import build_optimizer

        m = cfg.model
        torch.manual_seed(cfg.seed)
        self.model = GPT(m.vocab_size, m.hidden_size, m.n_layers, m.n_heads, cfg.train.seq_len)
        self.model.train()
        self.opt = build_optimizer(self.model, cfg.train, torch.device("cpu"))


class WithTrainer:
    """mltrain's Trainer driven by its own train_loop (eval and checkpoint saves switched off)."""

    def __init__(self, cfg: Any) -> None:
        from mltrain.train.distributed import DistInfo
        from mltrain.train.faults import FaultInjector, StopRequest, Watchdog
        from mltrain.train.trainer import Trainer

        info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
        self.cfg = cfg
        self.trainer = Trainer(cfg, info)
        run_dir = cfg.run_dir
        (run_dir / "control").mkdir(parents=True, exist_ok=True)
        self.stop = StopRequest(run_dir)
        self.watchdog = Watchdog(run_dir, 0, None)
        self.fault = FaultInjector(run_dir, 0)
        self.losses: list[float] = []

    def run(self, until: int, record: bool = False) -> None:
        from mltrain.train import trainer as T

        tc = self.cfg.train
        t = self.trainer
        real_step = t.train_step
        if record:

            def step() -> tuple[torch.Tensor, torch.Tensor]:
                loss, gnorm = real_step()
                self.losses.append(loss.item())
                return loss, gnorm

            t.train_step = step  # type: ignore[method-assign]
        old_max, old_eval, old_save = tc.max_steps, T._eval, t.save
        tc.max_steps = until  # the LR schedule reads max_steps: Bare.run sees the same value
        T._eval = lambda *a, **k: None
        t.save = lambda: True  # type: ignore[method-assign]
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the trainer's log lines
                T.train_loop(t, None, self.stop, self.watchdog, self.fault)
        finally:
            tc.max_steps, T._eval, t.save = old_max, old_eval, old_save
            t.train_step = real_step  # type: ignore[method-assign]


def timed(side: Bare | WithTrainer, steps: int, total: int, prof: cProfile.Profile | None) -> tuple[float, float]:
    """(wall, CPU) seconds per step for `steps` more steps (`total` = the LR schedule's max_steps).

    CPU time is this process's (all its threads): on a machine shared with other work it counts
    what the loop itself costs, while wall time also counts waiting for a core.
    """
    tc = side.cfg.train
    start = side.trainer.step if isinstance(side, WithTrainer) else side.step
    tc.max_steps = total
    t0, c0 = time.perf_counter(), time.process_time()
    if prof is not None:
        prof.enable()
    side.run(start + steps)
    if prof is not None:
        prof.disable()
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def top_functions(prof: cProfile.Profile, n: int = 25) -> list[str]:
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(n)
    lines = [line for line in buf.getvalue().splitlines() if line.strip()][-n - 1 :]
    # results are committed: paths relative to the checkout / site-packages, not this machine's
    return [re.sub(r"\S*/site-packages/", "site-packages/", line.replace(f"{ROOT}/", "")) for line in lines]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per side per pair")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--block", type=int, default=10, help="steps per side before switching sides")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    ap.add_argument("--text", help="train on this text (e.g. Tiny Shakespeare) instead of the stand-in")
    ap.add_argument("--chars", type=int, default=300_000)
    ap.add_argument("--seq-len", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--profile", action="store_true", help="cProfile one extra pair (not in the ratio)")
    ap.add_argument("--note", default="", help="free text stored with the result (e.g. machine load)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.smoke:
        a.pairs, a.steps, a.block, a.warmup, a.chars = 2, 4, 2, 2, 20_000
    if a.threads:
        torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="mltrain-overhead-"))
    cfg = make_config(work, a.text, a.chars, a.seq_len, a.batch)

    # Same arithmetic: a few recorded steps of each must give bit-identical losses.
    bare, trn = Bare(cfg), WithTrainer(cfg)
    bare.run(a.warmup, record=True)
    trn.run(a.warmup, record=True)
    same = bare.losses == trn.losses
    print(f"same losses for {a.warmup} steps: {same} ({bare.losses[-1]:.4f})")

    pairs = []
    for i in range(a.pairs):
        bare, trn, gpt = Bare(cfg), WithTrainer(cfg), PlainGPT(cfg)
        total = a.warmup + a.steps
        for side in (bare, trn, gpt):
            cfg.train.max_steps = total
            side.run(a.warmup)
        # blocks of `--block` steps, alternating which side goes first: load changes hit both alike
        acc = {"Bare": [0.0, 0.0], "WithTrainer": [0.0, 0.0], "PlainGPT": [0.0, 0.0]}
        for j in range(a.steps // a.block):
            order = (bare, trn, gpt) if (i + j) % 2 == 0 else (gpt, trn, bare)
            for side in order:
                wall, cpu = timed(side, a.block, total, None)
                acc[type(side).__name__][0] += wall / (a.steps // a.block)
                acc[type(side).__name__][1] += cpu / (a.steps // a.block)
        (bw, bc), (tw, tcpu), (_, gc) = acc["Bare"], acc["WithTrainer"], acc["PlainGPT"]
        pairs.append(
            {
                "gpt_cpu_s": gc,
                "model_vs_gpt_cpu": bc / gc,
                "bare_cpu_s": bc,
                "trainer_cpu_s": tcpu,
                "ratio_cpu": tcpu / bc,
                "bare_wall_s": bw,
                "trainer_wall_s": tw,
                "ratio_wall": tw / bw,
            }
        )
        print(
            f"pair {i + 1}/{a.pairs}: CPU bare {1e3 * bc:.2f} trainer {1e3 * tcpu:.2f} ms/step "
            f"(ratio {tcpu / bc:.4f}); wall bare {1e3 * bw:.2f} trainer {1e3 * tw:.2f} (ratio {tw / bw:.4f}); "
            f"plain GPT CPU {1e3 * gc:.2f} ms/step (mltrain model / GPT {bc / gc:.4f})",
            flush=True,
        )
    median = statistics.median(p["ratio_cpu"] for p in pairs)
    median_wall = statistics.median(p["ratio_wall"] for p in pairs)
    profile: dict[str, list[str]] = {}
    if a.profile:
        for side in (Bare(cfg), WithTrainer(cfg)):
            cfg.train.max_steps = a.warmup + a.steps
            side.run(a.warmup)
            prof = cProfile.Profile()
            timed(side, a.steps, a.warmup + a.steps, prof)
            profile[type(side).__name__] = top_functions(prof)
            print(f"\n--- cProfile {type(side).__name__} ({a.steps} steps), by own time ---")
            print("\n".join(profile[type(side).__name__]))
        for side in (Bare(cfg), PlainGPT(cfg)):
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as tprofile

            cfg.train.max_steps = a.warmup + a.steps
            side.run(a.warmup)
            with tprofile(activities=[ProfilerActivity.CPU]) as tp:
                timed(side, a.block, a.warmup + a.steps, None)
            table = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            profile[f"ops_{type(side).__name__}"] = table.splitlines()
            print(f"\n--- torch.profiler ops {type(side).__name__} ({a.block} steps) ---\n{table}")
    from mltrain.model.flops import param_count

    result = {
        "benchmark": "overhead",
        "mode": "smoke" if a.smoke else "full",
        "device": "cpu",
        "env": environment(torch.device("cpu")),
        "torch_threads": torch.get_num_threads(),
        "note": a.note,
        "recipe": {
            "config": "configs/shakespeare-char.yaml",
            "params": param_count(cfg.model),
            "seq_len": cfg.train.seq_len,
            "micro_batch": cfg.train.micro_batch_size,
            "text": a.text or f"generated stand-in, {a.chars} chars",
        },
        "steps_per_side": a.steps,
        "warmup_steps": a.warmup,
        "same_losses": same,
        "pairs": pairs,
        "median_ratio": median,
        "median_ratio_basis": "process CPU time per step",
        "median_overhead_pct": 100 * (median - 1),
        "median_ratio_wall": median_wall,
        "median_bare_cpu_ms": 1e3 * statistics.median(p["bare_cpu_s"] for p in pairs),
        "median_trainer_cpu_ms": 1e3 * statistics.median(p["trainer_cpu_s"] for p in pairs),
        "median_bare_wall_ms": 1e3 * statistics.median(p["bare_wall_s"] for p in pairs),
        "median_trainer_wall_ms": 1e3 * statistics.median(p["trainer_wall_s"] for p in pairs),
        "median_model_vs_gpt_cpu": statistics.median(p["model_vs_gpt_cpu"] for p in pairs),
        "gpt_params": sum(
            p.numel()
            for p in GPT(
                cfg.model.vocab_size, cfg.model.hidden_size, cfg.model.n_layers, cfg.model.n_heads, cfg.train.seq_len
            ).parameters()
        ),
        "target_max_ratio": TARGET_MAX_RATIO,
        "meets_target": median <= TARGET_MAX_RATIO,
        "profile": profile,
    }
    out = a.out or default_out("overhead", a.smoke, "cpu")
    write_json(out, result)
    print(
        f"median ratio trainer/bare: CPU time {median:.4f} ({100 * (median - 1):+.2f}%), wall {median_wall:.4f}, "
        f"over {len(pairs)} pairs -> {out}"
    )


if __name__ == "__main__":
    main()
