"""`mltrain bench collectives`: all-reduce, all-gather and reduce-scatter bandwidth through torch.distributed.

Figures follow nccl-tests (doc/PERFORMANCE.md there): for a message of S bytes taking t seconds,
    algbw = S / t
    busbw = algbw * 2(n-1)/n   for all-reduce
    busbw = algbw * (n-1)/n    for all-gather and reduce-scatter (S = the full, gathered buffer)
busbw is comparable with the hardware's link bandwidth whatever the rank count, so it is what the
shipped per-instance references (references.yaml) are in. GB/s here are 1e9 bytes/s, as nccl-tests.

Runs under torchrun (one process per GPU, NCCL; or gloo on CPU). `--nproc N` on one machine starts
torchrun itself, the way `mltrain train --nproc N` does; without --nproc, one rank per visible GPU.
At least 2 ranks: one rank has no peer, and every bandwidth would be 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from mltrain.errors import ConfigError
from mltrain.ops.checks import PASS, SKIP, WARN

OPS = ("all_reduce", "all_gather", "reduce_scatter")
MIN_BYTES = 1 << 20
DEFAULT_MAX_GPU = 4 << 30
DEFAULT_MAX_CPU = 8 << 20  # gloo over loopback: a few MB tell whether it works; more is only slow


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' correction from algorithm bandwidth to bus bandwidth."""
    if n <= 1:
        return 0.0
    if op == "all_reduce":
        return 2.0 * (n - 1) / n
    if op in ("all_gather", "reduce_scatter"):
        return (n - 1) / n
    raise ValueError(f"unknown collective {op!r}")


def bandwidths(op: str, size_bytes: int, time_s: float, n: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s (1e9) for one message of `size_bytes` taking `time_s`."""
    algbw = size_bytes / time_s / 1e9
    return algbw, algbw * bus_factor(op, n)


def message_sizes(max_bytes: int, min_bytes: int = MIN_BYTES) -> list[int]:
    """1 MB, 2 MB, 4 MB, ... up to and including max_bytes."""
    if max_bytes < min_bytes:
        raise ConfigError(f"--max-bytes {max_bytes}: must be at least {min_bytes} (1 MB)")
    sizes, s = [], min_bytes
    while s <= max_bytes:
        sizes.append(s)
        s *= 2
    return sizes


def parse_size(text: str) -> int:
    """'64M', '4G', '1048576' -> bytes (binary units, as the size column of nccl-tests)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise ConfigError(f"--max-bytes {text!r}: expected a size such as 64M or 4G") from None


@dataclass
class Result:
    op: str
    size_bytes: int
    time_us: float
    algbw_gbps: float
    busbw_gbps: float


def load_references() -> dict[str, Any]:
    return yaml.safe_load((Path(__file__).parent / "references.yaml").read_text())


def guess_instance_type(gpu_name: str | None, n_gpus: int) -> str | None:
    """The EC2 instance type whose reference applies to `n_gpus` of `gpu_name` in one node, if any."""
    if not gpu_name:
        return None
    refs = load_references()["instances"]
    upper = gpu_name.upper().replace(" ", "-")
    for itype, ref in sorted(refs.items(), key=lambda kv: -len(kv[1]["gpu"])):
        if ref["gpu"].upper() in upper and ref["gpus"] == n_gpus:
            return itype
    return None


def verdict(results: list[Result], instance_type: str | None, world: int, nodes: int) -> dict[str, Any]:
    """PASS/WARN per collective from the best busbw against the instance's shipped reference."""
    refs = load_references()
    ref = refs["instances"].get(instance_type or "")
    out: dict[str, Any] = {"instance_type": instance_type, "per_op": {}}
    for op in sorted({r.op for r in results}, key=OPS.index):
        best = max(r.busbw_gbps for r in results if r.op == op)
        row: dict[str, Any] = {"best_busbw_gbps": round(best, 3)}
        if ref is None or nodes != 1 or world != ref["gpus"]:
            why = "no reference for this instance type" if ref is None else "reference is for one full node"
            row.update(status=SKIP, reason=why)
        else:
            need = refs["pass_fraction"] * ref[op]
            row.update(reference_gbps=ref[op], status=PASS if best >= need else WARN)
            if best < need:
                row["reason"] = f"best busbw {best:.0f} GB/s < {refs['pass_fraction']:.0%} of {ref[op]} GB/s"
        out["per_op"][op] = row
    statuses = [r["status"] for r in out["per_op"].values()]
    out["status"] = WARN if WARN in statuses else (PASS if PASS in statuses else SKIP)
    return out


# --------------------------------------------------------------------------- worker (every rank)


def _time_op(op: str, size_bytes: int, iters: int, warmup: int, device: Any) -> float:
    """Seconds per call of `op` on a `size_bytes` message (the slowest rank's mean)."""
    import torch
    import torch.distributed as dist

    n = dist.get_world_size()
    elem = 4  # float32: gloo reduces it everywhere, NCCL too
    numel = max(n, size_bytes // elem // n * n)
    if op == "all_reduce":
        buf = torch.ones(numel, dtype=torch.float32, device=device)

        def call() -> None:
            dist.all_reduce(buf)
    elif op == "all_gather":
        out = torch.empty(numel, dtype=torch.float32, device=device)
        inp = torch.ones(numel // n, dtype=torch.float32, device=device)

        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13

        def call() -> None:
            gather(out, inp)
    else:
        inp = torch.ones(numel, dtype=torch.float32, device=device)
        out = torch.empty(numel // n, dtype=torch.float32, device=device)

        scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

        def call() -> None:
            scatter(out, inp)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        call()
    sync()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        call()
    sync()
    dt = torch.tensor([(time.perf_counter() - t0) / iters], dtype=torch.float64, device=device)
    dist.all_reduce(dt, op=dist.ReduceOp.MAX)
    return float(dt.item())


def run_collectives(
    ops: list[str], max_bytes: int | None, iters: int | None, warmup: int | None, device_req: str
) -> tuple[list[Result], dict[str, Any]]:
    """Run every size of every op on all ranks; returns (results, facts) identical on every rank."""
    import torch
    import torch.distributed as dist

    from mltrain.train.distributed import init_distributed

    info = init_distributed(device_req)  # torchrun's WORLD_SIZE >= 2: checked by collectives_command
    n = dist.get_world_size()
    gpu = info.device.type == "cuda"
    max_bytes = max_bytes or (DEFAULT_MAX_GPU if gpu else DEFAULT_MAX_CPU)
    iters = iters or (20 if gpu else 3)
    warmup = warmup if warmup is not None else (5 if gpu else 1)
    sizes = message_sizes(max_bytes)
    results: list[Result] = []
    progress = None
    if info.is_main and sys.stderr.isatty():
        from rich.progress import Progress

        progress = Progress(transient=True)
        progress.start()
        task = progress.add_task("collectives", total=len(ops) * len(sizes))
    try:
        for op in ops:
            for size in sizes:
                t = _time_op(op, size, iters, warmup, info.device)
                numel_bytes = max(n, size // 4 // n * n) * 4
                algbw, busbw = bandwidths(op, numel_bytes, t, n)
                results.append(Result(op, numel_bytes, t * 1e6, algbw, busbw))
                if progress is not None:
                    progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", os.environ.get("SLURM_NNODES", "1")) or 1)
    facts = {
        "world_size": n,
        "nodes": nodes,
        "backend": dist.get_backend(),
        "device": torch.cuda.get_device_name(info.device) if gpu else "cpu",
        "iters": iters,
        "warmup": warmup,
        "rank": info.rank,
    }
    dist.destroy_process_group()
    return results, facts


def report(results: list[Result], facts: dict[str, Any], instance_type: str | None) -> dict[str, Any]:
    gpu_name = facts["device"] if facts["device"] != "cpu" else None
    itype = (
        instance_type or os.environ.get("MLTRAIN_INSTANCE_TYPE") or guess_instance_type(gpu_name, facts["world_size"])
    )
    return {
        **{k: v for k, v in facts.items() if k != "rank"},
        "results": [asdict(r) for r in results],
        "verdict": verdict(results, itype, facts["world_size"], facts["nodes"]),
    }


def print_report(doc: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    t = Table(title=f"collectives: {doc['world_size']} ranks, {doc['backend']}, {doc['device']}")
    for col in ("op", "size", "time (us)", "algbw (GB/s)", "busbw (GB/s)"):
        t.add_column(col, justify="right")
    for r in doc["results"]:
        t.add_row(
            r["op"],
            f"{r['size_bytes'] / 2**20:.0f} MB",
            f"{r['time_us']:.1f}",
            f"{r['algbw_gbps']:.2f}",
            f"{r['busbw_gbps']:.2f}",
        )
    console.print(t)
    v = doc["verdict"]
    for op, row in v["per_op"].items():
        ref = f" (reference {row['reference_gbps']} GB/s)" if "reference_gbps" in row else ""
        why = f": {row['reason']}" if "reason" in row else ""
        console.print(f"{op}: best busbw {row['best_busbw_gbps']:.2f} GB/s{ref} -> {row['status']}{why}")
    console.print(f"verdict ({v['instance_type'] or 'unknown instance type'}): {v['status']}")


def torchrun_bench_command(args: list[str], nproc: int) -> list[str]:
    """torchrun for one machine, as launch/local.py's torchrun_command does for training."""
    from mltrain.launch.local import standalone_torchrun

    return [*standalone_torchrun(nproc), "-m", "mltrain", "bench", "collectives", *args]


def _visible_gpus(device: str) -> int:
    """GPUs this process may use for `--device` (0 for cpu); `--device cuda` without one is one line."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: choose auto, cpu or cuda")
    if device == "cpu":
        return 0
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "cuda" and gpus == 0:
        why = "a CPU-only torch build" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"--device cuda: no CUDA device is visible here ({why}, no GPU or driver); "
            "run on a GPU node, or use --device cpu for gloo ranks on CPU"
        )
    return gpus


def launch_size(nproc: int | None, device: str) -> int:
    """How many ranks to start on this machine: --nproc (at least 2: one rank has no peer, every
    bandwidth would be 0), or one per visible GPU; never more ranks than GPUs when on GPUs."""
    gpus = _visible_gpus(device)
    if nproc is None:
        if gpus >= 2:
            return gpus
        here = f"{gpus} GPU here" if gpus else "no GPU in use"
        raise ConfigError(
            f"bench collectives needs at least 2 ranks and finds {here}: give --nproc N (N >= 2; "
            "with --device cpu they are gloo processes)"
        )
    if nproc < 2:
        raise ConfigError(
            f"--nproc {nproc}: collectives need at least 2 ranks (one rank has no peer: every bandwidth would be 0)"
        )
    if 0 < gpus < nproc:
        if gpus < 2:
            raise ConfigError(
                f"--nproc {nproc} but {gpus} GPU here: collectives need at least 2 ranks "
                "(one per GPU; --device cpu runs gloo ranks on CPU)"
            )
        print(f"[mltrain] --nproc {nproc} but {gpus} GPUs here: running {gpus} ranks", flush=True)
        return gpus
    return nproc


def collectives_command(
    *,
    nproc: int | None,
    ops: str,
    max_bytes: str | None,
    iters: int | None,
    warmup: int | None,
    device: str,
    instance_type: str | None,
    json_out: bool,
    out: Path | None,
    console: Any,
) -> int:
    """Entry of `mltrain bench collectives`: launch torchrun, or be one of its workers."""
    import json

    op_list = [o.strip().replace("-", "_") for o in ops.split(",") if o.strip()]
    bad = [o for o in op_list if o not in OPS]
    if bad or not op_list:
        raise ConfigError(f"--ops {ops!r}: unknown collective(s) {bad}; choose from {', '.join(OPS)}")
    limit = parse_size(max_bytes) if max_bytes else None
    if limit is not None:
        message_sizes(limit)  # fail here, once, before starting workers
    if "LOCAL_RANK" not in os.environ:  # this process starts torchrun on this machine
        nproc = launch_size(nproc, device)  # every refusal is one line here, before torchrun prints anything
        args = ["--ops", ",".join(op_list), "--device", device]
        for flag, val in (
            ("--max-bytes", max_bytes),
            ("--iters", iters),
            ("--warmup", warmup),
            ("--instance-type", instance_type),
            ("--out", out),
        ):
            if val is not None:
                args += [flag, str(val)]
        if json_out:
            args.append("--json")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        return subprocess.run(torchrun_bench_command(args, nproc), env=env).returncode
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world < 2:
        raise ConfigError(
            f"bench collectives under torchrun with a world of {world} rank: collectives need at least 2 "
            "(--nproc-per-node x --nnodes >= 2)"
        )
    _visible_gpus(device)  # --device cuda on a rank without CUDA: one line, not a stack
    results, facts = run_collectives(op_list, limit, iters, warmup, device)
    if facts["rank"] != 0:
        return 0
    doc = report(results, facts, instance_type)
    if out is not None:
        from mltrain.fsutil import atomic_write

        atomic_write(out, json.dumps(doc, indent=2) + "\n")
    if json_out:
        print(json.dumps(doc, indent=2), flush=True)
    else:
        print_report(doc, console)
    return 0
