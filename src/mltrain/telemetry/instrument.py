"""Operate hooks for a training run, attached with ONE call from the trainer (`instrument`).

Without touching the training loop: the loader is wrapped to time data waits (`data_wait_s` is added
to every `train` record), `Trainer.save` is wrapped to time checkpoint saves (a `checkpoint` record:
save_s, stall_s), the straggler monitor hooks the model's forward, and the configured sinks
(Prometheus, MLflow, W&B) are attached to the MetricsWriter. Node exporters on other nodes' local rank 0
serve GPU metrics only.
"""

from __future__ import annotations

import time
from typing import Any

_KEEP: list[Any] = []  # exporters of non-writing ranks live as long as the process


class TimedLoader:
    """Delegates to the real loader; accumulates seconds spent in next_batch."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self.wait_s = 0.0

    def next_batch(self) -> Any:
        t0 = time.perf_counter()
        try:
            return self._loader.next_batch()
        finally:
            self.wait_s += time.perf_counter() - t0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _warn(msg: str) -> None:
    print(f"[mltrain] WARNING: {msg}", flush=True)


def open_sinks(cfg: Any, info: Any, writer: Any) -> Any:
    """Start the configured sinks; returns the Prometheus exporter (or None). A sink that cannot start
    (extra not installed, port taken, server down) is a warning: training goes on without it."""
    log = cfg.log
    exporter = None
    if log.prometheus.enabled and info.local_rank == 0:
        try:
            from mltrain.telemetry.prometheus import PrometheusExporter

            exporter = PrometheusExporter(log.prometheus, cfg.run_dir, cfg.name, training=writer is not None)
            if info.is_main:
                print(f"[mltrain] prometheus metrics on :{exporter.port}/metrics {exporter.gpu_note}", flush=True)
        except ImportError:
            _warn("log.prometheus: prometheus-client is not installed (pip install 'mltrain[prometheus]')")
        except OSError as e:
            _warn(f"log.prometheus: cannot serve on {log.prometheus.addr}:{log.prometheus.port}: {e}")
    if writer is None:
        if exporter is not None:
            _KEEP.append(exporter)
        return None
    if exporter is not None:
        writer.add_sink(exporter)
    for enabled, name, factory in (
        (log.mlflow.uri is not None, "mlflow", "MlflowSink"),
        (log.wandb.enabled, "wandb", "WandbSink"),
    ):
        if not enabled:
            continue
        try:
            from mltrain.telemetry import trackers

            writer.add_sink(getattr(trackers, factory)(cfg))
        except ImportError:
            _warn(f"log.{name}: the package is not installed (pip install 'mltrain[{name}]')")
        except Exception as e:
            _warn(f"log.{name}: cannot start ({type(e).__name__}: {e}); going on without it")
    return exporter


def instrument(trainer: Any, writer: Any, cfg: Any) -> None:
    """Attach timing wrappers, the straggler monitor and the sinks (call on every rank)."""
    info = trainer.info
    exporter = open_sinks(cfg, info, writer)
    if exporter is not None:  # from the files, not CheckpointManager.latest(): that one is a collective
        from mltrain.runstats import last_checkpoint

        newest = last_checkpoint(cfg.run_dir)
        if newest is not None:
            exporter.set_last_checkpoint(newest[1])

    loader = TimedLoader(trainer.loader)
    trainer.loader = loader
    if writer is not None:
        last = {"step": trainer.step, "wait": 0.0}

        def data_wait(record: dict[str, Any]) -> dict[str, Any]:
            if record.get("kind") != "train":
                return {}
            steps = max(1, record["step"] - last["step"])
            per_step = (loader.wait_s - last["wait"]) / steps
            last.update(step=record["step"], wait=loader.wait_s)
            return {"data_wait_s": per_step}

        writer.add_enricher(data_wait)

    save = trainer.save

    def timed_save() -> bool:
        t0 = time.perf_counter()
        ok = save()
        stall = time.perf_counter() - t0
        if writer is not None:
            rec = {"kind": "checkpoint", "step": trainer.step, "ok": bool(ok), "stall_s": stall}
            if not cfg.checkpoint.async_save:
                rec["save_s"] = stall  # synchronous: the whole save blocks training
            writer.write(rec)
        return ok

    trainer.save = timed_save

    every = cfg.log.stragglers.every_steps
    # Not under pipeline parallel: its stages do different work by design, and the monitor's gather (in a
    # forward hook) would wait inside the schedule on ranks still waiting for their stage's input.
    pipelined = getattr(trainer, "pipeline", None) is not None
    if every and info.world_size > 1 and not cfg.train.compile and not pipelined:  # (hooks break compiled graphs)
        from mltrain.telemetry.stragglers import StragglerMonitor

        _KEEP.append(StragglerMonitor(trainer, writer, every, cfg.log.stragglers.threshold))
