"""MFU and the metrics sinks (metrics.jsonl + TensorBoard + pluggable ones).

MFU = achieved training FLOP/s over the devices' bf16 peak, with the FLOPs per token of
mltrain.model.flops.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

# Dense bf16 tensor-core peak per device, FLOP/s (vendor data sheets, no sparsity).
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100": 989.4e12,
    "H200": 989.4e12,
    "GH200": 989.4e12,
    "A100": 312e12,
    "L40S": 362.05e12,
    "A10G": 70e12,  # no official figure for AWS's A10G; third-party, same as the cluster catalog
    "L4": 121e12,
}


def device_peak_flops(device_name: str | None) -> float | None:
    """Peak bf16 FLOP/s for a device name such as 'NVIDIA H100 80GB HBM3'; None on CPU/unknown."""
    if not device_name:
        return None
    upper = device_name.upper()
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in upper:
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(tokens_per_s: float, flops_per_tok: float, peak_flops: float | None, n_devices: int) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the devices' peak."""
    if not peak_flops or n_devices <= 0:
        return None
    return tokens_per_s * flops_per_tok / (peak_flops * n_devices)


class Sink(Protocol):
    """Somewhere records go besides metrics.jsonl: Prometheus, MLflow, W&B (mltrain.telemetry)."""

    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class MetricsWriter:
    """Appends JSON lines to <run>/metrics.jsonl (flushed per line), mirrors scalars to TensorBoard and
    hands every record to the pluggable sinks. metrics.jsonl is the source of truth: a sink that raises
    is reported once and dropped, never allowed to stop training."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, sinks: list[Sink] | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", buffering=1)  # noqa: SIM115  (lives as long as the run)
        self._tb = None
        self._sinks: list[Sink] = list(sinks or [])
        self._enrichers: list[Callable[[dict[str, Any]], dict[str, Any]]] = []
        self._recent: deque[dict[str, Any]] = deque(maxlen=64)  # replayed to a sink added late
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            except Exception:  # tensorboard missing or broken: metrics.jsonl is the source of truth
                self._tb = None

    def add_sink(self, sink: Sink) -> None:
        """Attach a sink; it first receives the records written so far in this process (e.g. `start`)."""
        for rec in self._recent:
            self._to_sink(sink, rec)
        self._sinks.append(sink)

    def add_enricher(self, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """`fn(record)` returns extra fields merged into every record before it is written."""
        self._enrichers.append(fn)

    def _to_sink(self, sink: Sink, record: dict[str, Any]) -> bool:
        try:
            sink.write(record)
            return True
        except Exception as e:
            print(f"[mltrain] WARNING: metrics sink {type(sink).__name__} failed ({e}); disabled", flush=True)
            return False

    def write(self, record: dict[str, Any]) -> None:
        record = {"time": round(time.time(), 3), **record}
        for fn in self._enrichers:
            record.update(fn(record))
        self._fh.write(json.dumps(record) + "\n")
        if self._tb is not None and "step" in record:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if k not in ("step", "time", "kind") and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(f"{kind}/{k}", v, record["step"])
        self._recent.append(record)
        self._sinks = [s for s in self._sinks if self._to_sink(s, record)]

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as e:
                print(f"[mltrain] WARNING: closing metrics sink {type(sink).__name__} failed: {e}", flush=True)
        self._sinks = []


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of <run>/metrics.jsonl; a torn last line (killed writer) is ignored."""
    from mltrain.fsutil import read_jsonl

    return read_jsonl(run_dir / "metrics.jsonl")
