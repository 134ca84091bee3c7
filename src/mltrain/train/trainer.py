"""The training loop: one process or one torchrun worker.

Order of work: join the process group, check the run dir and data (a problem here is a config
error that must never be requeued), build the model, apply parallelism, resume from the newest
valid checkpoint, then step. Every step boundary is a safe point for a stop request.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mltrain import exit_codes, rundir
from mltrain.config import ParallelConfig, RunConfig, dump_yaml, parallel_note, resolve_parallel
from mltrain.errors import ConfigError, DataError, MltrainError, RunDirError
from mltrain.fsutil import atomic_write
from mltrain.model.flops import flops_per_token, matmul_params
from mltrain.telemetry.instrument import instrument
from mltrain.train import metrics as M
from mltrain.train.checkpoint import CheckpointManager, read_trainer_state, resume_grad_accum
from mltrain.train.deadline import (
    Deadline,
    DeadlineClock,
    Margin,
    find_deadline,
    first_save_estimate,
    previous_saves,
    write_deadline,
)
from mltrain.train.distributed import DistInfo, all_reduce_mean, any_rank, full_value, init_distributed, shutdown
from mltrain.train.faults import INTERRUPTED, FaultInjector, StopRequest, Watchdog, peer_hung, write_exit_reason
from mltrain.train.host_alloc import keep_freed_memory
from mltrain.train.optim import build_optimizer, lr_at, set_lr
from mltrain.train.parallel import parallelize, parallelize_mesh
from mltrain.train.start_checks import check_layout, flatten, precheck

# Distributed workers never destroy their trainer: DDP's Reducer destructor runs ~ProcessGroupGloo in
# the thread holding the GIL, which joins a gloo thread waiting for the GIL (a deadlock seen here ~1 run
# in 7). Workers keep it here and leave with os._exit once their files are closed (launch/local.py).
_KEEPALIVE: list[object] = []


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(f"[mltrain] {msg}", flush=True)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    """{dotted key: [old, new]} for every setting both configs have and that differs, in config order.

    A key only one side has (a setting added to mltrain since) is left out: its value then is unknown. A
    whole block given on one side and null on the other (a `parallel:` block added or removed) is one
    change, `key: {block} -> null` or back."""
    a, b = flatten(old), flatten(new)
    out = {k: [a[k], b[k]] for k in b if k in a and a[k] != b[k]}
    for key in sorted(set(_null_blocks(old)) ^ set(_null_blocks(new))):
        was, now = old.get(key) if isinstance(old, dict) else None, new.get(key) if isinstance(new, dict) else None
        if (was is None) != (now is None):
            out[key] = [was, now]
    return out


def _null_blocks(cfg: dict[str, Any]) -> list[str]:
    """Top-level keys whose value is null (a block left out)."""
    return [k for k, v in cfg.items() if v is None] if isinstance(cfg, dict) else []


def _fmt_value(v: Any) -> str:
    import json

    return v if isinstance(v, str) else json.dumps(v)


CHANGES_SHOWN = 8  # keys named in the one resume line; metrics.jsonl's start record has them all


def describe_changes(changes: dict[str, list[Any]]) -> str:
    """'train.lr 0.003 -> 0.001, train.max_steps 3 -> 5' (the first CHANGES_SHOWN, then how many more)."""
    parts = [f"{k} {_fmt_value(a)} -> {_fmt_value(b)}" for k, (a, b) in list(changes.items())[:CHANGES_SHOWN]]
    if len(changes) > CHANGES_SHOWN:
        parts.append(f"{len(changes) - CHANGES_SHOWN} more (metrics.jsonl, start record)")
    return ", ".join(parts)


def resumed_config(cfg: RunConfig, trainer_state: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The config the checkpoint was trained with, and what it is called in the resume line.

    Checkpoints carry their config; older ones do not, and then the run dir's config.yaml (written by
    the previous accepted start, read before this start rewrites it) stands in."""
    import yaml

    saved = trainer_state.get("config")
    if isinstance(saved, dict):
        return saved, "the checkpoint"
    try:
        old = yaml.safe_load((cfg.run_dir / rundir.CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None, ""
    return (old, f"the run dir's {rundir.CONFIG_FILE}") if isinstance(old, dict) else (None, "")


def _checkpoint_layout(state: dict[str, Any]) -> tuple[int | None, int | None, int | None]:
    """(data-parallel ranks, micro batch, grad_accum_steps) a checkpoint was trained with (None where not
    recorded); the data-parallel ranks are the world unless a `parallel:` block split it further."""
    loader = state.get("loader") or {}

    def num(v: Any) -> int | None:
        return int(v) if v else None

    return (
        num(state.get("dp_size") or state.get("world_size") or loader.get("world_size")),
        num(state.get("micro_batch_size") or loader.get("micro_batch_size")),
        num(state.get("grad_accum_steps")),
    )


def write_config(cfg: RunConfig) -> None:
    atomic_write(cfg.run_dir / rundir.CONFIG_FILE, dump_yaml(cfg))


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def build_model(cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    """Construct on the meta device, materialise on `device`, initialise (seeded, same on all ranks)."""
    from mltrain.model.transformer import Transformer

    with torch.device("meta"):
        model = Transformer(cfg.model)
    model.to_empty(device=device)
    torch.manual_seed(cfg.seed)
    with torch.no_grad():
        model.init_weights()
    return model


class Trainer:
    """State and steps of one run on this rank."""

    def __init__(self, cfg: RunConfig, info: DistInfo) -> None:
        self.cfg = cfg
        self.info = info
        if info.device.type == "cpu":  # reuse freed activation buffers instead of page-faulting them in
            keep_freed_memory()
        self.run_dir = cfg.run_dir
        tc = cfg.train
        self.bf16 = tc.dtype == "bf16" or (tc.dtype == "auto" and info.device.type == "cuda")
        self.fsdp_active = tc.parallel == "fsdp" and info.world_size > 1
        # A `parallel:` block: this rank's place on the device mesh; the loader splits over dp ranks only.
        self.layout: ParallelConfig | None = None
        self.dp_rank, self.dp_size = info.rank, info.world_size
        if cfg.parallel is not None:
            from mltrain.train.mesh import dp_coordinate

            self.layout = resolve_parallel(cfg, info.world_size, info.device.type)
            self.dp_rank, self.dp_size = dp_coordinate(self.layout, info.rank)
            if note := parallel_note(cfg):
                _log(info, note)
        ckpt_args: dict[str, Any] = {
            "async_save": cfg.checkpoint.async_save,
            "warn": lambda m: _log(info, "WARNING: " + m),
            "info": lambda m: _log(info, m),
        }
        if cfg.checkpoint.storage:  # checkpoints live on S3, not under the run dir
            from mltrain.train.s3_checkpoint import S3CheckpointManager

            self.ckpt = S3CheckpointManager(
                cfg.checkpoint.storage, self.run_dir, cfg.checkpoint.keep_last, info.rank, info.world_size, **ckpt_args
            )
        else:
            self.ckpt = CheckpointManager(
                self.run_dir, cfg.checkpoint.keep_last, info.rank, info.world_size, **ckpt_args
            )
        if cfg.checkpoint.mirror:  # pull the newest remote checkpoint when none is local; mirror new ones
            from mltrain.train.mirror import attach_checkpoint_mirror

            attach_checkpoint_mirror(self.ckpt, cfg.checkpoint)
        resume = self.ckpt.latest() if cfg.checkpoint.resume else None
        if not cfg.checkpoint.resume and (committed := rundir.committed_checkpoints(self.run_dir)):
            _log(
                info,
                f"checkpoint.resume is false: training from step 0, not from the committed step {committed[-1][0]}",
            )
        self.grad_accum_steps = tc.grad_accum_steps
        self.config_changes: dict[str, list[Any]] = {}  # resumed: setting -> [checkpoint's, this start's]
        if resume is not None:
            state = read_trainer_state(resume[1])
            # A checkpoint from another data-parallel size keeps its global batch: grad_accum absorbs the change.
            batch_state = {**state, "world_size": state.get("dp_size") or state.get("world_size")}
            self.grad_accum_steps = resume_grad_accum(
                batch_state, resume[1], self.dp_size, tc.micro_batch_size, tc.grad_accum_steps
            )
            if self.grad_accum_steps != tc.grad_accum_steps:
                old_world, old_micro, _ = _checkpoint_layout(state)
                _log(
                    info,
                    f"{resume[1].name} was written by {old_world} rank(s) x micro batch {old_micro}: grad_accum_steps "
                    f"{tc.grad_accum_steps} -> {self.grad_accum_steps} on {self.dp_size} rank(s) keeps its "
                    f"global batch of {self.grad_accum_steps * tc.micro_batch_size * self.dp_size} sequences",
                )
            self._report_config_changes(resume[0], state)
        self.model = build_model(cfg, info.device)
        self.shapes = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        self.loss_parallel = self.layout is not None and self.layout.loss_parallel
        # Pipeline parallel: this rank's stages and their schedule (train.pipeline); None otherwise.
        self.pipeline: Any = None
        self.cp_mesh: Any = None  # context parallel: the cp axis (train.context_parallel)
        init_from = cfg.model.init_from if resume is None else None
        if self.layout is None:
            self.module = parallelize(self.model, tc.parallel, info, self.bf16, tc.compile, tc.activation_checkpointing)
        else:
            from mltrain.train.mesh import build_mesh

            self.mesh = build_mesh(self.layout, info.device.type)
            kw = {
                "bf16": self.bf16,
                "compile_blocks": tc.compile,
                "activation_checkpointing": tc.activation_checkpointing,
                "loss_parallel": self.loss_parallel,
            }
            if self.layout.pp > 1:
                from mltrain.train.pipeline import build_pipeline

                if init_from:  # into the whole model, before it is cut into stages
                    self._init_from(init_from)
                    init_from = None
                self.module, self.pipeline, self.fsdp_active = build_pipeline(
                    self.model, self.mesh, self.layout, info, **kw
                )
            else:
                from mltrain.train.mesh import cp_mesh

                self.cp_mesh = cp_mesh(self.mesh)
                self.module, self.fsdp_active = parallelize_mesh(self.model, self.mesh, info, **kw)
        self.params = list(self.module.parameters())  # walked once, not every step (loads copy in place)
        if init_from:  # after sharding: under FSDP each rank reads only its slice of every tensor from the files
            self._init_from(init_from)
        self.optimizer = build_optimizer(self.module, tc, info.device)
        self.loader = self.make_loader("train")
        self.step = 0
        if resume is not None:
            self._resume(*resume)
        n_dev = info.world_size if info.device.type == "cuda" else 0
        self.peak = M.device_peak_flops(torch.cuda.get_device_name(info.device)) if n_dev else None
        self.n_devices = n_dev
        self.flops_per_token = flops_per_token(cfg.model, tc.seq_len)
        self.tokens_per_step = tc.micro_batch_size * tc.seq_len * self.grad_accum_steps * self.dp_size

    def _init_from(self, path: str) -> None:
        from mltrain.model.hf.load import load_hf_weights

        load_hf_weights(self.model, path, show_progress=self.info.is_main)
        _log(self.info, f"initialised from {path}")

    def _report_config_changes(self, step: int, state: dict[str, Any]) -> None:
        """Say in one line (rank 0) which settings differ from the ones the checkpoint trained with.

        Everything that may change on a resume is allowed (the frozen keys were refused by precheck);
        but a new lr, schedule length or batch changes the run from the next step, and that must not
        happen with no word. The global batch is named when it changes (grad_accum_steps on the same
        ranks and micro batch), since the schedule's tokens per step change with it."""
        old, source = resumed_config(self.cfg, state)
        if old is None:
            return
        self.config_changes = config_changes(old, self.cfg.model_dump(mode="json"))
        if not self.config_changes:
            return
        line = f"resume: config changed since {source} (step {step}): {describe_changes(self.config_changes)}"
        old_world, old_micro, old_accum = _checkpoint_layout(state)
        if old_world and old_micro and old_accum:
            before = old_world * old_micro * old_accum
            now = self.dp_size * self.cfg.train.micro_batch_size * self.grad_accum_steps
            if before != now:
                line += f"; global batch {before} -> {now} sequences per step"
        _log(self.info, line)

    def make_loader(self, split: str) -> Any:
        """This rank's loader for `split`; a fresh val loader starts from the same batches every eval."""
        from mltrain.data.loader import TokenLoader

        tc = self.cfg.train
        return TokenLoader(
            Path(self.cfg.data.dir),
            split,
            tc.seq_len,
            tc.micro_batch_size,
            self.dp_rank,
            self.dp_size,
            self.cfg.seed,
            grad_accum_steps=self.grad_accum_steps if split == "train" else 1,
        )

    # ------------------------------------------------------------------ state
    def _app_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.module, self.optimizer)
        if self.pipeline is not None:
            self.pipeline.name_every_param(optim_sd)
        return {"model": model_sd, "optim": optim_sd}

    def _resume(self, step: int, path: Path) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = self._app_state()
        trainer_state = self.ckpt.load(path, state, self.shapes)
        set_state_dict(self.module, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        self.loader.load_state_dict(trainer_state["loader"])
        _set_rng_state(trainer_state.get("_rank_state", {}).get("rng", {}))
        self.step = int(trainer_state["step"])
        _log(self.info, f"resumed from {path} (step {self.step})")

    def save(self) -> bool:
        trainer_state = {
            "step": self.step,
            "loader": self.loader.state_dict(),
            "world_size": self.info.world_size,
            "dp_size": self.dp_size,  # the ranks the global batch is split over (world / tp, cp, pp)
            "micro_batch_size": self.cfg.train.micro_batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "config_name": self.cfg.name,
            "config": self.cfg.model_dump(mode="json"),  # what a later resume compares its config with
        }
        return self.ckpt.save(self.step, self._app_state(), trainer_state, {"rng": _rng_state()})

    # ------------------------------------------------------------------ steps
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast unless FSDP's MixedPrecisionPolicy already casts (it is applied only when
        world_size > 1: `parallel: fsdp` on one GPU trains unsharded and needs autocast)."""
        if self.bf16 and not self.fsdp_active:
            return torch.autocast(device_type=self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss_ctx(self) -> contextlib.AbstractContextManager[Any]:
        """torch's loss_parallel() around forward and backward when the head's logits are vocab-sharded."""
        if self.loss_parallel:
            from torch.distributed.tensor.parallel import loss_parallel

            return loss_parallel()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _cp_ctx(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor] | None]:
        """Context parallel around one forward and backward: x, y and the RoPE tables sharded over the cp
        ranks (train.context_parallel), ring attention inside; yields the tables for the model. Without cp,
        nothing (the model makes its own tables)."""
        if self.cp_mesh is None:
            yield None
            return
        from mltrain.train.context_parallel import sequence_sharded

        cos, sin = self.model.rope(x.shape[1])
        with sequence_sharded(self.cp_mesh, [x, y, cos, sin], [1, 1, 0, 0]):
            yield cos, sin

    def _cp_mean(self, loss: torch.Tensor) -> torch.Tensor:
        """The step loss over the whole sequence: each cp rank's loss is its chunks' token mean."""
        if self.cp_mesh is None:
            return loss
        return all_reduce_mean(loss.clone(), self.cp_mesh.get_group())

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        tc = self.cfg.train
        set_lr(self.optimizer, lr_at(self.step + 1, tc))
        accum = self.grad_accum_steps
        total: torch.Tensor | None = None
        for micro in range(accum):
            x, y = self.loader.next_batch()
            x = x.to(self.info.device, non_blocking=True)
            y = y.to(self.info.device, non_blocking=True)
            if self.pipeline is not None:  # the schedule runs forward and backward of every stage
                with self._loss_ctx(), self._autocast():
                    done = self.pipeline.step(x, y, accum)
                total = done if total is None else total + done
                continue
            sync = micro == accum - 1
            no_sync = getattr(self.module, "no_sync", None)
            ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
            if hasattr(self.module, "set_requires_gradient_sync"):  # FSDP2
                self.module.set_requires_gradient_sync(sync)
            with self._loss_ctx(), self._cp_ctx(x, y) as rope:
                with ctx, self._autocast():
                    loss = self.module(x, y, loss_chunk_tokens=tc.loss_chunk_tokens, rope=rope)
                if accum > 1:  # no extra ops (or autograd node) per step without accumulation: same values
                    loss = loss / accum
                loss.backward()
            done = self._cp_mean(full_value(loss.detach()))
            total = done if total is None else total + done
        if self.pipeline is not None:
            from mltrain.train.pipeline import clip_grad_norm

            gnorm = clip_grad_norm(self.params, tc.grad_clip, self.pipeline.group)
        elif tc.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, tc.grad_clip)
        else:
            gnorm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if hasattr(gnorm, "full_tensor"):
            gnorm = gnorm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        assert total is not None
        return total, gnorm

    @torch.no_grad()
    def evaluate(self) -> float | None:
        tc = self.cfg.train
        try:
            val = self.make_loader("val")
        except DataError as e:
            _log(self.info, f"no evaluation: {e}")
            return None
        self.module.eval()
        total = torch.zeros((), device=self.info.device)
        for _ in range(tc.eval_batches):
            x, y = (t.to(self.info.device) for t in val.next_batch())
            with self._loss_ctx(), self._autocast():
                if self.pipeline is not None:
                    total += self.pipeline.eval(x, y)
                else:
                    total += full_value(self.module(x, y, loss_chunk_tokens=tc.loss_chunk_tokens).float())
        self.module.train()
        return float(all_reduce_mean(total / tc.eval_batches).item())


def _fmt_rate(x: float) -> str:
    return f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _fmt_hms(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


SUMMARY_LOSS_STEPS = 50  # the end-of-run train loss is the mean over this many last steps


class LoopStats:
    """What the end-of-run summary needs: recent train losses, the last eval, checkpoints, tokens."""

    def __init__(self, start_step: int) -> None:
        self.start_step = start_step
        self.t0 = time.perf_counter()
        self.train_time_s = 0.0
        self.windows: list[tuple[float, int]] = []  # (mean loss, steps) per logged window
        self.val_loss: float | None = None
        self.last_saved: int | None = None

    def recent_loss(self) -> tuple[float, int] | None:
        """Mean train loss over the last <= SUMMARY_LOSS_STEPS steps (from the logged windows)."""
        total, n = 0.0, 0
        for loss, steps in reversed(self.windows):
            if n >= SUMMARY_LOSS_STEPS:
                break
            total, n = total + loss * steps, n + steps
        return (total / n, n) if n else None

    def summary(self, trainer: Trainer, reason: str) -> list[str]:
        """The end-of-run lines (each well under 100 columns)."""
        tc = trainer.cfg.train
        wall = time.perf_counter() - self.t0
        steps = trainer.step - self.start_step
        head = f"{reason}: step {trainer.step}/{tc.max_steps}, wall {_fmt_hms(wall)}"
        if steps > 0 and self.train_time_s > 0:
            head += f", {_fmt_rate(steps * trainer.tokens_per_step / self.train_time_s)} tok/s"
        losses = []
        # the run's last train loss as status and report define it (runstats.last_loss, from metrics.jsonl,
        # which the exit record has just joined); this start's own windows only without a metrics file
        from mltrain import runstats
        from mltrain.fsutil import read_jsonl

        metrics = read_jsonl(trainer.run_dir / rundir.METRICS_FILE) if trainer.info.is_main else []
        last = runstats.last_loss(metrics)
        if last is not None:
            losses.append(f"train loss {last[0]:.3f} (mean of last {last[1]} logged)")
        elif (recent := self.recent_loss()) is not None:
            losses.append(f"train loss {recent[0]:.3f} (mean of last {recent[1]} steps)")
        if self.val_loss is not None:
            losses.append(f"val loss {self.val_loss:.4f}")
        used = f"resumed step {self.start_step}" if self.start_step else "fresh start"
        wrote = f"wrote step {self.last_saved}" if self.last_saved is not None else "wrote none"
        return [head, *(["  " + ", ".join(losses)] if losses else []), f"  checkpoint: {used}, {wrote}"]


def train_loop(
    trainer: Trainer,
    writer: M.MetricsWriter | None,
    stop: StopRequest,
    watchdog: Watchdog,
    fault: FaultInjector,
    stats: LoopStats | None = None,
    deadline: DeadlineClock | None = None,
) -> str:
    """Step until done, asked to stop or at the last step boundary before the deadline; returns the exit
    reason word. With a deadline every step boundary is a stop check: rank 0 decides, every rank agrees."""
    cfg, info = trainer.cfg, trainer.info
    tc = cfg.train
    stats = stats or LoopStats(trainer.step)
    if deadline is not None and info.is_main:
        _time_saves(trainer, deadline)
    window_loss = torch.zeros((), device=info.device)
    window_steps = 0
    t_window = 0.0
    last_saved = trainer.step
    trainer.module.train()
    while trainer.step < tc.max_steps:
        if window_steps == 0:  # a window starts at its first step: eval and checkpoint time stay out of tokens/s
            t_window = time.perf_counter()
        t_step = time.perf_counter()
        fault.maybe_fire(trainer.step + 1)
        loss, gnorm = trainer.train_step()
        if deadline is not None:
            deadline.margin.observe_step(time.perf_counter() - t_step)
        window_loss += loss
        window_steps += 1
        watchdog.beat()
        trainer.ckpt.poll()
        step = trainer.step
        if step % tc.log_every == 0 or step == tc.max_steps:
            mean_loss = float(all_reduce_mean(window_loss / window_steps).item())
            if info.device.type == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t_window) / window_steps
            stats.train_time_s += dt * window_steps
            stats.windows.append((mean_loss, window_steps))
            tps = trainer.tokens_per_step / dt
            mfu = M.mfu(tps, trainer.flops_per_token, trainer.peak, trainer.n_devices)
            rec = {
                "kind": "train",
                "step": step,
                "loss": mean_loss,
                "lr": lr_at(step, tc),
                "grad_norm": float(gnorm),
                "tokens_per_s": tps,
                "mfu": mfu,
                "step_time_s": dt,
                "mem_gib": _memory_gib(info.device),
            }
            if writer:
                writer.write(rec)
            mfu_s = f"{100 * mfu:.1f}%" if mfu is not None else "-"
            elapsed = _fmt_hms(time.perf_counter() - stats.t0)
            eta = _fmt_hms((tc.max_steps - step) * dt)
            until = f" dl {_fmt_hms(deadline.left_s())}" if deadline is not None else ""
            _log(  # <= ~100 columns: step, loss, lr, grad norm, speed, MFU, elapsed and ETA of this start
                info,
                f"step {step}/{tc.max_steps} loss {mean_loss:.4f} lr {rec['lr']:.1e} gnorm {rec['grad_norm']:.2f} "
                f"{_fmt_rate(tps)} tok/s mfu {mfu_s} {elapsed} eta {eta}{until}",
            )
            if not math.isfinite(mean_loss):
                raise MltrainError(f"loss is {mean_loss} at step {step}; lower train.lr or check the data")
            window_loss.zero_()
            window_steps = 0
        if tc.eval_every and step % tc.eval_every == 0 and step < tc.max_steps:
            stats.val_loss = _eval(trainer, writer) or stats.val_loss
            watchdog.beat()
        if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and step < tc.max_steps:
            if _save(trainer, deadline):
                stats.last_saved = step
            last_saved = step
            watchdog.beat()
        due = deadline is not None and info.is_main and step < tc.max_steps and deadline.due()
        checks = step % tc.stop_check_every == 0 or deadline is not None
        if checks and any_rank(due or stop.requested(check_file=info.is_main), info.device):
            if deadline is not None and any_rank(due, info.device):
                _log(
                    info,
                    f"deadline {deadline.deadline.iso} ({deadline.deadline.source}) in "
                    f"{_fmt_hms(deadline.left_s())}, {deadline.margin.words()}: checkpointing step {step}, then exiting",
                )
                if last_saved != step and _save(trainer, deadline):
                    stats.last_saved = step
                trainer.ckpt.wait()
                if info.is_main:
                    stop.consume()  # a stop asked for at the same time is answered by this one
                return exit_codes.REASON_DEADLINE
            why = stop.why() if info.is_main else (stop.signalled or "stop file")
            stop.seen = why
            _log(info, f"stop requested ({why}) at step {step}: checkpointing, then exiting for requeue")
            if last_saved != step and _save(trainer, deadline):
                stats.last_saved = step
            trainer.ckpt.wait()
            if info.is_main:
                stop.consume()  # done what it asked: the next start must train, not stop again
            return exit_codes.REASON_PREEMPTED
    stats.val_loss = _eval(trainer, writer) or stats.val_loss
    if last_saved != trainer.step and _save(trainer, deadline):
        stats.last_saved = trainer.step
    trainer.ckpt.wait()
    return exit_codes.REASON_DONE


def _save(trainer: Trainer, deadline: DeadlineClock | None) -> bool:
    """trainer.save(), its start noted for the deadline's margin (measured up to its commit)."""
    if deadline is not None:
        deadline.save_started()
    return trainer.save()


def _time_saves(trainer: Trainer, deadline: DeadlineClock) -> None:
    """Rank 0: every commit (after a synchronous save, or a background one) is a measured save time."""
    before = trainer.ckpt.on_commit

    def committed(path: Path) -> None:
        deadline.committed()
        if before is not None:
            before(path)

    trainer.ckpt.on_commit = committed


def deadline_clock(trainer: Trainer, deadline: Deadline | None) -> DeadlineClock | None:
    """The loop's clock for `deadline`. Before this run has measured a save, the save is estimated from this
    rank's share of the state (weights and two Adam moments in fp32)."""
    if deadline is None:
        return None
    params = sum(p.numel() for p in trainer.params)
    state_bytes = params * 4 * 3 / max(1, trainer.info.world_size)
    margin = Margin(first_save_estimate(state_bytes))
    if trainer.info.is_main:  # rank 0 decides: a resumed start begins with the run's measured saves
        for seconds in previous_saves(trainer.run_dir):
            margin.observe_save(seconds)
    return DeadlineClock(deadline, margin)


def _layout_words(trainer: Trainer) -> str:
    """train.parallel's word, or the `parallel:` block's degrees above 1 ('dp_shard 2 x tp 2')."""
    if trainer.layout is None:
        return trainer.cfg.train.parallel
    from mltrain.train.mesh import degrees

    layout = trainer.layout
    words = " x ".join(f"{k} {v}" for k, v in degrees(layout).items() if v > 1) or "none"
    if layout.pp > 1:
        from mltrain.train.stages import split_words

        split = split_words(trainer.cfg.model.n_layers, layout.pp, layout.pp_schedule)
        words += f" ({layout.pp_schedule}, {layout.microbatches()} micro batches, {split})"
    return words


def _eval(trainer: Trainer, writer: M.MetricsWriter | None) -> float | None:
    val = trainer.evaluate()
    if val is None:
        return None
    ppl = math.exp(min(val, 50.0))
    if writer:
        writer.write({"kind": "eval", "step": trainer.step, "val_loss": val, "val_ppl": ppl})
    _log(trainer.info, f"eval step {trainer.step} | val loss {val:.4f} | val ppl {ppl:.2f}")
    return val


def _take_lease(cfg: RunConfig, info: DistInfo) -> Any:
    """Rank 0's run-dir lease, or None when the launcher that started us holds it (local torchrun)."""
    from mltrain import lease

    if lease.inherited(cfg.run_dir):
        return None
    return lease.acquire_lease(
        cfg.run_dir, job_id=os.environ.get("SLURM_JOB_ID"), data_dir=cfg.data.dir, say=lambda m: _log(info, m)
    )


def _record_refusal(run_dir: Path, err: BaseException, info: DistInfo) -> None:
    """A start refused before training: say why in control/ only when no earlier outcome is recorded
    there (the Slurm batch script clears it before each attempt, so a job still gets config_error and is
    not requeued; a finished or stopped local run keeps its state)."""
    if not info.is_main or not run_dir.exists() or rundir.read_exit_reason(run_dir) is not None:
        return
    write_exit_reason(run_dir, exit_codes.REASON_CONFIG_ERROR)
    with contextlib.suppress(OSError):
        atomic_write(run_dir / rundir.EXIT_MESSAGE_FILE, str(err) + "\n")


def run_training(cfg: RunConfig) -> int:
    """Train `cfg` on this rank. Returns the process exit code (see exit_codes).

    Every check that can refuse the start (data, run dir, lease, resume) runs before config.yaml or
    control/exit_reason are written, so a refused start leaves the run as it was.
    """
    from mltrain.lease import LeaseHeldError

    info = init_distributed(cfg.train.device)
    run_dir = cfg.run_dir
    writer = None
    watchdog = None
    held = None
    started = False
    t_start = time.time()
    stop = StopRequest(run_dir, announce=info.is_main)  # from here a Ctrl-C is a stop request
    try:
        try:
            deadline = None
            if info.is_main:
                check_layout(cfg, info.world_size, info.device.type)
                precheck(cfg)
                deadline = find_deadline()
                held = _take_lease(cfg, info)
            ok: list[Any] = [True, deadline]
        except (ConfigError, DataError, RunDirError) as e:
            ok = [e, None]
        if torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(ok, src=0)
        deadline = ok[1]
        if ok[0] is not True:
            if not isinstance(ok[0], LeaseHeldError):  # never write into a run dir another process owns
                _record_refusal(run_dir, ok[0], info)
            if info.is_main:
                raise ok[0]
            return exit_codes.CONFIG_ERROR
        fault = FaultInjector(run_dir, info.rank, stop)
        try:
            trainer = Trainer(cfg, info)
        except MltrainError as e:  # e.g. a checkpoint this config cannot resume
            _record_refusal(run_dir, e, info)
            raise
        if info.is_main:
            write_config(cfg)  # only now: the start is accepted
            (run_dir / rundir.CONTROL_DIR).mkdir(exist_ok=True)
            write_deadline(run_dir, deadline)
        started = True
        if info.world_size > 1:
            _KEEPALIVE.append(trainer)
        if info.is_main:
            writer = M.MetricsWriter(run_dir, tensorboard=cfg.train.tensorboard)
            writer.write(
                {
                    "kind": "start",
                    "step": trainer.step,
                    "world_size": info.world_size,
                    "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
                    "job_id": os.environ.get("SLURM_JOB_ID"),
                    "params": matmul_params(cfg.model),
                    "flops_per_token": trainer.flops_per_token,
                    **({"config_changes": trainer.config_changes} if trainer.config_changes else {}),
                    **({"deadline": deadline.record()} if deadline is not None else {}),
                }
            )
        _log(
            info,
            f"run {cfg.name}: {info.world_size} x {info.device.type}, parallel={_layout_words(trainer)}, "
            f"{'bf16' if trainer.bf16 else 'fp32'}, steps {trainer.step}->{cfg.train.max_steps}, "
            f"{trainer.tokens_per_step} tokens/step, run dir {run_dir}",
        )
        instrument(trainer, writer, cfg)  # metrics sinks, data-wait/checkpoint timing, stragglers (mltrain.telemetry)
        watchdog = Watchdog(run_dir, info.rank, cfg.train.hang_timeout_s)
        stats = LoopStats(trainer.step)
        clock = deadline_clock(trainer, deadline)
        if clock is not None:
            _log(
                info,
                f"deadline {clock.deadline.iso} ({clock.deadline.source}), in {_fmt_hms(clock.left_s())}; the last checkpoint "
                f"starts before it ({clock.margin.words()}, re-measured at each save)",
            )
        reason = train_loop(trainer, writer, stop, watchdog, fault, stats, clock)
        if writer:
            writer.write({"kind": "exit", "step": trainer.step, "reason": reason})
        if info.is_main:
            write_exit_reason(run_dir, reason)
        done = reason == exit_codes.REASON_DONE
        for line in stats.summary(trainer, "done" if done else "stopped"):
            _log(info, line)
        if not done and info.is_main:
            what = "interrupted" if stop.seen == INTERRUPTED else f"stopped ({stop.seen})"
            if reason == exit_codes.REASON_DEADLINE and deadline is not None:
                what = f"stopped before its deadline ({deadline.source}, {deadline.iso})"
            saved = stats.last_saved == trainer.step or (stats.last_saved is None and trainer.step == stats.start_step)
            ckpt = f"checkpointed step {trainer.step}" if saved else f"checkpoint of step {trainer.step} FAILED"
            print(f"{what}: {ckpt}, exit 75; run again to resume", flush=True)
        return exit_codes.DONE if done else exit_codes.REQUEUE
    except MltrainError:
        if started and info.is_main and run_dir.exists():
            write_exit_reason(run_dir, exit_codes.REASON_CONFIG_ERROR)
        raise
    except BaseException:
        if started and run_dir.exists() and not peer_hung(run_dir, t_start):
            write_exit_reason(run_dir, exit_codes.REASON_FAILED)
        raise
    finally:
        if watchdog:
            watchdog.close()
        if writer:
            writer.close()
        if cfg.checkpoint.mirror:  # the last checkpoint leaves the node before the process does
            from mltrain.train.mirror import wait_for_uploads

            wait_for_uploads()
        if held is not None:
            held.release()
        shutdown()
