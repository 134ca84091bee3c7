"""Straggler detection: every N steps each rank's compute time is gathered and compared with the median.

Wall time per step is the same on every rank of a synchronous job (everyone waits in the gradient
all-reduce for the slowest), so the time that differs is each rank's own compute before that wait. We
time the model's forward passes (forward pre/post hooks on the unwrapped model; CUDA events on GPU),
sum them over the window, all_gather one float per rank, and log a rank whose time exceeds the median
by more than `threshold` with its host and GPU, as a `straggler` record in metrics.jsonl:

  {"kind": "straggler", "step": 500, "rank": 13, "host": "p5-7", "gpu": "NVIDIA H100 80GB HBM3",
   "local_rank": 5, "rank_time_s": 0.61, "median_s": 0.42, "slowdown": 0.45, "threshold": 0.2,
   "window_steps": 50}
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from typing import Any

SLOW_RANK_ENV = "MLTRAIN_SLOW_RANK"  # tests only: "<rank>:<seconds>" sleeps that long in each forward


class StragglerMonitor:
    def __init__(self, trainer: Any, writer: Any, every_steps: int, threshold: float) -> None:
        import torch
        import torch.distributed as dist

        self.trainer = trainer
        self.info = trainer.info
        self.writer = writer
        self.every = every_steps
        self.threshold = threshold
        self.cuda = self.info.device.type == "cuda"
        gpu = torch.cuda.get_device_name(self.info.device) if self.cuda else "cpu"
        me = {"host": socket.gethostname().split(".")[0], "gpu": gpu, "local_rank": self.info.local_rank}
        self.ranks: list[dict[str, Any]] = [me]
        if dist.is_initialized():
            self.ranks = [{} for _ in range(dist.get_world_size())]
            dist.all_gather_object(self.ranks, me)
        self._open: Any = None
        self._spans: list[Any] = []
        self._cpu_s = 0.0
        self._window_start = trainer.step
        self._checked = trainer.step
        self._slow = self._parse_slow()
        model = trainer.model
        model.register_forward_pre_hook(self._pre)
        model.register_forward_hook(self._post)

    def _parse_slow(self) -> float:
        raw = os.environ.get(SLOW_RANK_ENV, "")
        if raw:
            rank, _, secs = raw.partition(":")
            if int(rank) == self.info.rank:
                return float(secs)
        return 0.0

    def _pre(self, module: Any, args: Any) -> None:
        if not module.training:
            return
        step = self.trainer.step
        if step != self._checked and step > 0 and step % self.every == 0:
            self._checked = step
            self._check(step)
        if self.cuda:
            import torch

            start = torch.cuda.Event(enable_timing=True)
            start.record()
            self._open = start
        else:
            self._open = time.perf_counter()
        if self._slow:
            time.sleep(self._slow)

    def _post(self, module: Any, args: Any, output: Any) -> None:
        if not module.training or self._open is None:
            return
        if self.cuda:
            import torch

            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._spans.append((self._open, end))
        else:
            self._cpu_s += time.perf_counter() - self._open
        self._open = None

    def _window_seconds(self) -> float:
        if self.cuda:
            if self._spans:
                self._spans[-1][1].synchronize()
            total = sum(s.elapsed_time(e) for s, e in self._spans) / 1000.0
            self._spans = []
            return total
        total, self._cpu_s = self._cpu_s, 0.0
        return total

    def _check(self, step: int) -> None:
        import torch
        import torch.distributed as dist

        steps = max(1, step - self._window_start)
        self._window_start = step
        mine = torch.tensor([self._window_seconds() / steps], dtype=torch.float64, device=self.info.device)
        if not dist.is_initialized():
            return
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, mine)
        if not self.info.is_main:
            return
        times = [float(t.item()) for t in gathered]
        median = statistics.median(times)
        for rank, t in enumerate(times):
            if median > 0 and t > median * (1 + self.threshold):
                who = self.ranks[rank]
                rec = {
                    "kind": "straggler",
                    "step": step,
                    "rank": rank,
                    "host": who.get("host"),
                    "gpu": who.get("gpu"),
                    "local_rank": who.get("local_rank"),
                    "rank_time_s": t,
                    "median_s": median,
                    "slowdown": t / median - 1,
                    "threshold": self.threshold,
                    "window_steps": steps,
                }
                print(
                    f"[mltrain] straggler at step {step}: rank {rank} on {rec['host']} ({rec['gpu']}, local rank "
                    f"{rec['local_rank']}) {t * 1e3:.1f} ms/step of compute vs median {median * 1e3:.1f} ms "
                    f"(+{100 * rec['slowdown']:.0f}%)",
                    flush=True,
                )
                if self.writer is not None:
                    self.writer.write(rec)
