"""Checkpoints reaching S3: how long after a local commit the mirror's copy is durable (its marker on
S3), how much the training loop is held up by it, and the same checkpoints written straight to S3
(`checkpoint.storage`), where the save itself is the upload.

A CPU training loop (a stack of Linear layers with Adam, `torch.set_num_threads(1)`) runs `--steps`
steps three times: without checkpoints (the baseline step time), with local checkpoints every
`--every` steps plus the mirror, and with checkpoints on S3. The S3 server (moto) runs in its own
process, so its work is not charged to the training process's interpreter (it still shares the
machine's cores). Per checkpoint it records:

- mirror: `save_s` (the local DCP save and commit, the same without a mirror), `staging_s` (the only
  part of the mirror in the training thread: hard links), `lag_s` (local commit -> marker on S3);
  and the step times while an upload runs against the baseline (the background thread competes for
  the CPU and the GIL);
- storage on S3: `save_s` (DCP through s3torchconnector, hashes, marker: training waits for it).

    python bench/s3_checkpoint.py                 # 64 MiB of weights (192 MiB with Adam), 3 checkpoints
    python bench/s3_checkpoint.py --smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, host_environment, today, write_json

MiB = 1 << 20


def start_server() -> tuple[subprocess.Popen, str]:
    code = (
        "import logging,sys\n"
        "logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
        "from moto.server import ThreadedMotoServer\n"
        "s=ThreadedMotoServer(ip_address='127.0.0.1',port=0,verbose=False);s.start()\n"
        "print(s.get_host_and_port()[1],flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


class Loop:
    def __init__(self, state_mib: int, batch: int) -> None:
        import torch

        torch.manual_seed(0)
        torch.set_num_threads(1)
        width = 1024
        layers = max(1, state_mib * MiB // (width * width * 4))
        self.model = torch.nn.Sequential(*[torch.nn.Linear(width, width, bias=False) for _ in range(layers)])
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.x = torch.randn(batch, width)

    def step(self) -> float:
        t0 = time.perf_counter()
        self.opt.zero_grad()
        self.model(self.x).square().mean().backward()
        self.opt.step()
        return time.perf_counter() - t0

    def app_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.opt)
        return {"model": model_sd, "optim": optim_sd}


def run(loop: Loop, steps: int, every: int, manager: Any | None) -> list[float]:
    times = []
    for step in range(1, steps + 1):
        times.append(loop.step())
        if manager is not None and step % every == 0:
            manager.save(step, loop.app_state(), {"step": step}, {})
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-mib", type=int, default=64, help="weights; Adam adds twice as much")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--engine", default="auto", help="the mirror's transfer engine (MLTRAIN_S3_ENGINE)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.smoke:
        args.state_mib, args.steps, args.every = 8, 12, 4

    import boto3

    from mltrain.train.checkpoint import CheckpointManager
    from mltrain.train.mirror import CheckpointMirror
    from mltrain.train.s3_checkpoint import S3CheckpointManager

    load_before = os.getloadavg()
    server, endpoint = start_server()
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
            "MLTRAIN_S3_ENGINE": args.engine,
        }
    )
    os.environ.pop("AWS_PROFILE", None)
    work = Path(tempfile.mkdtemp(prefix="mltrain-s3ckpt-"))
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    quiet = lambda m: None  # noqa: E731
    try:
        loop = Loop(args.state_mib, args.batch)
        run(loop, 5, args.every, None)  # warm-up
        baseline = run(loop, args.steps, args.every, None)

        # local checkpoints + the mirror
        local = CheckpointManager(work / "run", keep_last=2, rank=0, world_size=1, warn=print, info=quiet)
        mirror = CheckpointMirror(f"s3://{bucket}/mirror", work / "run", keep_last=2, warn=print, info=quiet)
        events: list[dict[str, Any]] = []
        upload_windows: list[tuple[float, float]] = []
        real_upload = mirror._upload

        def timed_upload(staged: Path) -> None:
            t0 = time.perf_counter()
            real_upload(staged)
            done = time.perf_counter()
            upload_windows.append((t0, done))
            for e in events:
                if e["name"] == staged.name:
                    e["lag_s"] = round(done - e["committed_at"], 3)

        mirror._upload = timed_upload  # type: ignore[method-assign]

        def on_commit(path: Path) -> None:
            t0 = time.perf_counter()
            mirror.committed(path)
            events.append({"name": path.name, "committed_at": t0, "staging_s": round(time.perf_counter() - t0, 4)})

        local.on_commit = on_commit
        save_s: list[float] = []
        real_save = local.save

        def timed_save(*a: Any, **k: Any) -> bool:
            t0 = time.perf_counter()
            ok = real_save(*a, **k)
            save_s.append(round(time.perf_counter() - t0, 3))
            return ok

        local.save = timed_save  # type: ignore[method-assign]
        step_ends: list[float] = []
        mirrored_times = []
        for step in range(1, args.steps + 1):
            mirrored_times.append(loop.step())
            step_ends.append(time.perf_counter())
            if step % args.every == 0:
                local.save(step, loop.app_state(), {"step": step}, {})
        mirror.wait()
        during = [
            t for t, end in zip(mirrored_times, step_ends, strict=True) if any(a <= end <= b for a, b in upload_windows)
        ]
        newest = sorted((work / "run" / "checkpoints").glob("step_*"))[-1]
        state_bytes = sum(p.stat().st_size for p in newest.rglob("*") if p.is_file())

        # checkpoints straight to S3
        direct = S3CheckpointManager(
            f"s3://{bucket}/direct", work / "run2", keep_last=2, rank=0, world_size=1, warn=print, info=quiet
        )
        direct_save_s: list[float] = []
        for step in range(1, args.steps + 1):
            loop.step()
            if step % args.every == 0:
                t0 = time.perf_counter()
                assert direct.save(step, loop.app_state(), {"step": step}, {})
                direct_save_s.append(round(time.perf_counter() - t0, 3))

        med = statistics.median(baseline)
        result: dict[str, Any] = {
            "benchmark": "s3_checkpoint",
            "mode": "smoke" if args.smoke else "full",
            "server": "moto ThreadedMotoServer on 127.0.0.1, own process (shares the CPU with the loop)",
            "checkpoint_mib": round(state_bytes / MiB, 1),
            "steps": args.steps,
            "every": args.every,
            "baseline_step_s": {"median": round(med, 4), "p90": round(sorted(baseline)[int(0.9 * len(baseline))], 4)},
            "mirror": {
                "engine": args.engine,
                "save_s": save_s,
                "checkpoints": [{k: v for k, v in e.items() if k != "committed_at"} for e in events],
                "steps_during_upload": len(during),
                "step_s_during_upload_median": round(statistics.median(during), 4) if during else None,
                "slowdown_during_upload": round(statistics.median(during) / med, 2) if during else None,
                "training_thread_blocked_s": [e["staging_s"] for e in events],
            },
            "storage_s3": {"save_s": direct_save_s},
            "environment": {
                **host_environment(load_before),
                "threads": threading.active_count(),
            },
        }
        out = args.out or (
            Path(tempfile.mkdtemp()) / "smoke-s3-checkpoint.json"
            if args.smoke
            else RESULTS_DIR / f"s3-checkpoint-{args.engine}-{today()}.json"
        )
        write_json(out, result)
        m = result["mirror"]
        lags = [e.get("lag_s") for e in m["checkpoints"]]
        print(
            f"checkpoint {result['checkpoint_mib']} MiB: local save {save_s} s; mirror staging (training waits) "
            f"{m['training_thread_blocked_s']} s, commit -> durable on S3 {lags} s; "
            f"step time during uploads x{m['slowdown_during_upload']} of the baseline"
        )
        print(f"storage on S3: save (training waits) {direct_save_s} s")
        print(f"wrote {out}")
        return 0
    finally:
        server.stdin.close()
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
