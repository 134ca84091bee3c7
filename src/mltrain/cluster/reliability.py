"""Failures at fleet scale and the checkpoint interval that costs the least: the mean time between failures
from a per-GPU-hour rate, Young's and Daly's optimum intervals, the goodput they leave, and the
`checkpoint.every_steps` that gives that interval.

C: seconds a checkpoint save blocks training; M: mean time between failures of the job; R: seconds from a
failure to training again; tau: compute time between two saves. Failures are Poisson (exponential gaps).
  MTBF            M = 1 / (rate per GPU-hour x GPUs of the job)
  Young (1974)    tau = sqrt(2 C M)
  Daly (2006)     first order: tau = sqrt(2 C M) - C (for C << M);
                  higher order: tau = sqrt(2 C M) [1 + sqrt(C / 2M) / 3 + (C / 2M) / 9] - C for C < 2M, else M
  goodput         Daly's complete model of the expected wall time, T_w = M e^(R/M) (e^((tau + C)/M) - 1) T_s / tau,
                  so goodput = T_s / T_w = tau / (M e^(R/M) (e^((tau + C)/M) - 1)); for C, tau, R << M the time
                  lost is about C / tau + (tau / 2 + R) / M. Without failures it is tau / (tau + C).
The same goodput model serves the plan's line per model and `mltrain plan checkpoint-interval`.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from mltrain.config import StrictModel
from mltrain.errors import ClusterError, ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from mltrain.cluster.fleet import Fleet, FleetModel
    from mltrain.cluster.planner import ModelPlan, Plan

# Llama 3 405B pre-training (Meta, "The Llama 3 Herd of Models", 2024, section 3.3.4): 419 unexpected
# interruptions in a 54-day snapshot on 16,384 H100 GPUs.
LLAMA3_INTERRUPTIONS = 419
LLAMA3_DAYS = 54
LLAMA3_GPUS = 16384
DEFAULT_RATE_PER_GPU_HOUR = LLAMA3_INTERRUPTIONS / (LLAMA3_DAYS * 24 * LLAMA3_GPUS)
DEFAULT_SAVE_S = 60.0  # a save cost to plan with when nothing was measured and the fleet names none


class Failures(StrictModel):
    """`failures:` of a fleet: how often things break and what each recovery costs."""

    rate_per_gpu_hour: float = Field(
        default=DEFAULT_RATE_PER_GPU_HOUR, ge=0, description="unexpected interruptions per GPU-hour (Llama 3's)"
    )
    in_place_fraction: float = Field(
        default=0.5, ge=0, le=1, description="share of failures torchrun restarts in place (no node lost)"
    )
    in_place_restart_s: float = Field(default=300, ge=0, description="failure to training again, in place")
    requeue_s: float = Field(default=900, ge=0, description="failure to training again after a Slurm requeue")
    node_replace_s: float = Field(
        default=3600, ge=0, description="a lost node with no spare: waiting for a replacement instance"
    )
    spare_nodes: int = Field(default=0, ge=0, description="idle nodes kept to replace a lost one at once")
    checkpoint_save_s: float | None = Field(
        default=None, gt=0, description="seconds a save blocks training; default: measured, else 60"
    )
    checkpoint_interval_min: float | None = Field(
        default=None, gt=0, description="the interval to plan with; default: Daly's optimum"
    )


def mtbf_hours(rate_per_gpu_hour: float, gpus: int) -> float:
    """Mean time between failures of a job on `gpus` GPUs, failures independent per GPU; inf at rate 0."""
    rate = rate_per_gpu_hour * gpus
    return math.inf if rate <= 0 else 1.0 / rate


def daly_first_order(save: float, mtbf: float) -> float:
    """Daly (2006), first order: sqrt(2CM) - C, good for C << M; any consistent unit. Like the higher-order form
    it is M for C >= 2M (where sqrt(2CM) - C would fall to zero or below)."""
    if save >= 2.0 * mtbf:
        return mtbf
    return math.sqrt(2.0 * save * mtbf) - save


def young_interval(save: float, mtbf: float) -> float:
    """Young (1974): sqrt(2 C M), compute time between checkpoints; any consistent unit."""
    return math.sqrt(2.0 * save * mtbf)


def daly_interval(save: float, mtbf: float) -> float:
    """Daly (2006), the higher-order optimum: sqrt(2CM)[1 + sqrt(C/2M)/3 + (C/2M)/9] - C for C < 2M, else M."""
    if save >= 2.0 * mtbf:
        return mtbf
    x = save / (2.0 * mtbf)
    return math.sqrt(2.0 * save * mtbf) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - save


def goodput(interval: float, save: float, restart: float, mtbf: float) -> float:
    """Share of wall time spent on compute that is kept, checkpointing every `interval` of compute: Daly's
    complete model, tau / (M e^(R/M) (e^((tau + C)/M) - 1)), failures also striking saves and restarts;
    tau / (tau + C) without failures (M = inf). Any consistent unit."""
    if interval <= 0 or save < 0 or restart < 0 or mtbf <= 0:
        raise ValueError(
            f"goodput needs interval > 0, save >= 0, restart >= 0, mtbf > 0 (got {interval}, {save}, {restart}, {mtbf})"
        )
    if math.isinf(interval):
        return 0.0 if not math.isinf(mtbf) else 1.0
    if math.isinf(mtbf):
        return interval / (interval + save)
    return interval / (mtbf * math.exp(restart / mtbf) * math.expm1((interval + save) / mtbf))


def mean_recovery_s(f: Failures) -> float:
    """Mean seconds from a failure to training again under the fleet's mix: in_place_fraction of failures are
    restarted in place; the others lose a node and go through a Slurm requeue, plus the wait for a replacement
    instance when no spare node is kept (a spare takes the lost node's place at once)."""
    moved = f.requeue_s + (0.0 if f.spare_nodes > 0 else f.node_replace_s)
    return f.in_place_fraction * f.in_place_restart_s + (1.0 - f.in_place_fraction) * moved


def every_steps(interval_s: float, step_s: float) -> int:
    """`checkpoint.every_steps` nearest to `interval_s` of compute (at least 1); 0 (only at the end and on a
    stop) when the interval is infinite, i.e. nothing fails."""
    if not step_s > 0 or math.isinf(step_s):
        raise ClusterError(f"a step time must be a positive number of seconds, got {step_s}")
    if math.isinf(interval_s):
        return 0
    return max(1, round(interval_s / step_s))


# --------------------------------------------------------------------------- measured save and restart times


def _metrics_path(path: Path) -> Path | None:
    """A run's metrics.jsonl from a pointer: the file itself, or the run directory holding it."""
    if path.is_dir():
        return path / "metrics.jsonl"
    return path if path.suffix == ".jsonl" else None


def read_save_seconds(path: str | Path, async_save: bool = False) -> tuple[float, str] | None:
    """Seconds a checkpoint save blocks training and how that was read, or None when the file has no such
    figure. A run's metrics.jsonl (or its run dir): the median `stall_s` of its successful `checkpoint`
    records (the trainer times every save: the whole save when synchronous, the staging when async). A
    bench/checkpoint.py result JSON: `sync_blocked_s`, or `async_blocked_s` for a run that saves async."""
    path = Path(path)
    metrics = _metrics_path(path)
    if metrics is not None:
        if not metrics.is_file():
            raise ClusterError(f"{metrics}: no such file (a run's metrics.jsonl or a checkpoint bench JSON)")
        from mltrain.fsutil import read_jsonl

        stalls = [
            float(r["stall_s"])
            for r in read_jsonl(metrics)
            if r.get("kind") == "checkpoint" and r.get("ok", True) and isinstance(r.get("stall_s"), int | float)
        ]
        if not stalls:
            return None
        n = len(stalls)
        return statistics.median(stalls), f"median of {n} save{'s' if n > 1 else ''}: {metrics}"
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ClusterError(f"{path}: cannot read checkpoint result: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise ClusterError(f"{path}: not JSON: {e}") from None
    if not isinstance(data, dict):
        return None
    mode = "async" if async_save else "sync"
    value = data.get(f"{mode}_blocked_s")
    if not isinstance(value, int | float):
        value = ((data.get("modes") or {}).get(mode) or {}).get("blocked_s_median")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if not value >= 0:
        raise ClusterError(f"{path}: {mode}_blocked_s {value} is not a number of seconds")
    return float(value), f"bench, {mode} save: {path}"


def read_recovery_seconds(run_dir: str | Path) -> list[float]:
    """Seconds each failure of a run took to recover, from its restarts.jsonl (the launcher's records; restarts
    for a preemption or a time limit are not failures) and metrics.jsonl: from the last metrics record before
    the restart record to the trainer's next `start` record (the checkpoint is loaded by then)."""
    from mltrain.fsutil import read_jsonl
    from mltrain.runstats import PREEMPT_CAUSES, RESTART_ACTIONS

    run_dir = Path(run_dir)
    times = sorted(
        (float(r["time"]), r.get("kind"))
        for r in read_jsonl(run_dir / "metrics.jsonl")
        if isinstance(r.get("time"), int | float)
    )
    out = []
    for r in read_jsonl(run_dir / "restarts.jsonl"):
        t = r.get("time")
        if r.get("action") not in RESTART_ACTIONS or r.get("cause") in PREEMPT_CAUSES or not isinstance(t, int | float):
            continue
        before = [x for x, _ in times if x <= t]
        after = [x for x, kind in times if x > t and kind == "start"]
        if before and after:
            out.append(after[0] - before[-1])
    return out


def _async_save(run_config: str | None) -> bool:
    """checkpoint.async_save of a model's run YAML, read as plain YAML (False when it cannot be read: the
    fleet's submit reports a broken run config; here it only picks the bench figure)."""
    if not run_config:
        return False
    try:
        import yaml

        data = yaml.safe_load(Path(run_config).read_text())
        return bool(((data or {}).get("checkpoint") or {}).get("async_save", False))
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return False


def save_cost(m: FleetModel, f: Failures) -> tuple[float, str]:
    """Save seconds for model `m` and where they come from: its checkpoint_result (a run's metrics.jsonl or
    run dir, or a bench/checkpoint.py JSON), else its bench_result when that is a run's metrics.jsonl with
    timed saves, else failures.checkpoint_save_s, else DEFAULT_SAVE_S."""
    if m.checkpoint_result is not None:
        try:
            got = read_save_seconds(m.checkpoint_result, _async_save(m.run_config))
        except ClusterError as e:
            raise ClusterError(f"model {m.name}: checkpoint_result {e}") from None
        if got is None:
            raise ClusterError(
                f"model {m.name}: checkpoint_result {m.checkpoint_result}: no save time in it (a run's "
                "metrics.jsonl with `checkpoint` records, or a bench/checkpoint.py JSON with sync_blocked_s)"
            )
        return got[0], f"measured, {got[1]}"
    if m.bench_result is not None and _metrics_path(Path(m.bench_result)) is not None:
        got = read_save_seconds(m.bench_result)
        if got is not None:
            return got[0], f"measured, {got[1]}"
    if f.checkpoint_save_s is not None:
        return f.checkpoint_save_s, "failures.checkpoint_save_s"
    return DEFAULT_SAVE_S, "default: nothing measured"


def recovery_cost(m: FleetModel, f: Failures) -> tuple[float, str]:
    """Seconds from a failure to training again for model `m`: the mean of the recoveries its run measured
    (the run behind checkpoint_result or a metrics.jsonl bench_result), else the fleet's failures mix."""
    for pointer in (m.checkpoint_result, m.bench_result):
        metrics = None if pointer is None else _metrics_path(Path(pointer))
        if metrics is None or not metrics.is_file():
            continue
        got = read_recovery_seconds(metrics.parent)
        if got:
            n = len(got)
            return statistics.fmean(got), f"measured, mean of {n} recover{'ies' if n > 1 else 'y'}: {metrics.parent}"
    return mean_recovery_s(f), "failures mix"


# --------------------------------------------------------------------------- per model of a plan


def step_seconds(m: FleetModel, mp: ModelPlan, gpus_per_node: int) -> tuple[float, str]:
    """Seconds of one optimizer step (no gradient accumulation): the plan's layout estimate, else tokens per
    step (micro batch x seq_len x every GPU a data-parallel rank) over the plan's tokens per second."""
    est = (mp.layout or {}).get("step_estimate_s") or {}
    if isinstance(est.get("step"), int | float) and est["step"] > 0:
        return float(est["step"]), "layout estimate"
    tokens_per_step = m.micro_batch_size * m.seq_len * mp.nodes * gpus_per_node
    tokens_per_s = mp.tokens / (mp.days * 86400.0)
    return tokens_per_step / tokens_per_s, "tokens per step / tokens per s at the plan's MFU"


@dataclass
class ModelReliability:
    """One model's failures, checkpoint interval and goodput, with where each input came from."""

    name: str
    gpus: int
    mtbf_h: float | None  # None: no failures (rate 0)
    expected_failures: float  # over the planned days
    save_s: float
    save_source: str
    restart_s: float
    restart_source: str
    young_min: float | None
    daly_first_order_min: float | None
    daly_min: float | None
    interval_min: float | None  # the one planned with: Daly's, or failures.checkpoint_interval_min
    interval_source: str
    step_s: float
    step_source: str
    every_steps: int  # checkpoint.every_steps (0: only at the end and on a stop)
    goodput: float  # at the interval every_steps gives

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _minutes(x_s: float) -> float | None:
    return None if math.isinf(x_s) else x_s / 60.0


def model_reliability(m: FleetModel, mp: ModelPlan, f: Failures, gpus_per_node: int) -> ModelReliability:
    """The reliability figures of one planned model (see the module docstring for the formulas)."""
    gpus = mp.nodes * gpus_per_node
    mtbf_s = mtbf_hours(f.rate_per_gpu_hour, gpus) * 3600.0
    save, save_src = save_cost(m, f)
    restart, restart_src = recovery_cost(m, f)
    step, step_src = step_seconds(m, mp, gpus_per_node)
    daly = daly_interval(save, mtbf_s)
    if f.checkpoint_interval_min is not None:
        interval, interval_src = f.checkpoint_interval_min * 60.0, "failures.checkpoint_interval_min"
    else:
        interval, interval_src = daly, "Daly"
    steps = every_steps(interval, step)
    return ModelReliability(
        name=m.name,
        gpus=gpus,
        mtbf_h=None if math.isinf(mtbf_s) else mtbf_s / 3600.0,
        expected_failures=mp.days * 24.0 * f.rate_per_gpu_hour * gpus,
        save_s=save,
        save_source=save_src,
        restart_s=restart,
        restart_source=restart_src,
        young_min=_minutes(young_interval(save, mtbf_s)),
        daly_first_order_min=_minutes(daly_first_order(save, mtbf_s)),
        daly_min=_minutes(daly),
        interval_min=_minutes(interval),
        interval_source=interval_src,
        step_s=step,
        step_source=step_src,
        every_steps=steps,
        goodput=goodput(math.inf if steps == 0 else steps * step, save, restart, mtbf_s),
    )


def fleet_reliability(fleet: Fleet, plan: Plan) -> list[ModelReliability]:
    """Per model of the plan, in its order: MTBF on its GPUs, save and restart costs, the interval and its
    checkpoint.every_steps, and the expected goodput."""
    by_name = {m.name: m for m in fleet.models}
    return [model_reliability(by_name[mp.name], mp, fleet.failures, plan.gpus_per_node) for mp in plan.models]


def _duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def reliability_line(r: ModelReliability) -> str:
    """One line for the plan's text output (--json has every figure and the step time's source)."""
    mtbf = "no failures" if r.mtbf_h is None else f"MTBF {r.mtbf_h:,.1f} h"
    every = "only at the end" if r.interval_min is None else f"every {r.interval_min:,.0f} min ({r.interval_source})"
    return (
        f"checkpoints {r.name}: {mtbf} on {r.gpus} GPUs, save {r.save_s:.3g} s ({r.save_source}) -> {every} = "
        f"checkpoint.every_steps {r.every_steps} (step {r.step_s:.3g} s); expected goodput {100 * r.goodput:.1f}% "
        f"(restart {_duration(r.restart_s)}, {r.restart_source})"
    )


# --------------------------------------------------------------------------- `mltrain plan checkpoint-interval`


def _positive(name: str, value: float, zero_ok: bool = False) -> float:
    ok = math.isfinite(value) and (value >= 0 if zero_ok else value > 0)
    if not ok:
        raise ConfigError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} finite number, got {value:g}")
    return value


def checkpoint_interval(save_s: float, mtbf_h: float, restart_s: float = 0.0) -> dict[str, float | None]:
    """Young's and Daly's intervals in minutes for a save of `save_s` and an MTBF of `mtbf_h`; the goodput at
    Daly's higher-order interval when a restart time is given (> 0), else None."""
    _positive("--save-s", save_s)
    _positive("--mtbf-h", mtbf_h)
    _positive("--restart-s", restart_s, zero_ok=True)
    mtbf_s = mtbf_h * 3600.0
    daly = daly_interval(save_s, mtbf_s)
    return {
        "save_s": save_s,
        "mtbf_h": mtbf_h,
        "restart_s": restart_s or None,
        "young_min": young_interval(save_s, mtbf_s) / 60.0,
        "daly_first_order_min": daly_first_order(save_s, mtbf_s) / 60.0,
        "daly_min": daly / 60.0,
        "goodput": goodput(daly, save_s, restart_s, mtbf_s) if restart_s > 0 else None,
    }


def checkpoint_interval_command(
    save_s: float, mtbf_h: float, restart_s: float = 0.0, json_out: bool = False, console: Console | None = None
) -> dict[str, float | None]:
    """`mltrain plan checkpoint-interval --save-s S --mtbf-h H [--restart-s R] [--json]`."""
    from rich.console import Console

    console = console or Console()
    r = checkpoint_interval(save_s, mtbf_h, restart_s)
    if json_out:
        console.print(json.dumps(r, indent=2), markup=False, highlight=False, soft_wrap=True)
        return r
    lines = [
        f"checkpoint interval (compute time between saves) for a {save_s:g} s save and a {mtbf_h:g} h MTBF:",
        f"  Young, sqrt(2CM):                    {r['young_min']:10.1f} min",
        f"  Daly first order, sqrt(2CM) - C:     {r['daly_first_order_min']:10.1f} min",
        f"  Daly higher order (use this one):    {r['daly_min']:10.1f} min",
    ]
    if save_s >= 2 * mtbf_h * 3600:
        lines.append(
            "  the save takes at least twice the MTBF: Daly's answer is the MTBF itself; make the save cheaper"
        )
    if r["goodput"] is not None:
        lines.append(
            f"expected goodput at {r['daly_min']:.1f} min with a {restart_s:g} s restart: {100 * r['goodput']:.1f}% "
            "(Daly's expected wall-time model)"
        )
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return r
