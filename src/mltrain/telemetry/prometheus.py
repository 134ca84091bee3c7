"""Prometheus exporter for a training run (needs the `prometheus` extra: prometheus-client).

Every node's local rank 0 serves /metrics. The global rank 0 also exports the trainer's records
(it receives every record through MetricsWriter, see mltrain.telemetry.instrument). GPU gauges use
dcgm-exporter's names and units so dashboards built for DCGM keep working; labels are gpu, UUID and
device as dcgm-exporter's, plus model_name and hostname (dcgm-exporter spells those modelName and
Hostname, which `promtool check metrics` rejects as camelCase). Read from NVML at scrape time.

Metric names (dashboards/training.json is built on exactly these):
  mltrain_step, mltrain_loss, mltrain_val_loss, mltrain_tokens_per_second, mltrain_mfu_ratio,
  mltrain_step_time_seconds, mltrain_data_wait_seconds, mltrain_checkpoint_save_seconds,
  mltrain_checkpoint_stall_seconds, mltrain_last_checkpoint_timestamp_seconds, mltrain_restarts,
  mltrain_stragglers_total, mltrain_straggler_slowdown_ratio
  DCGM_FI_DEV_GPU_UTIL (%), DCGM_FI_DEV_FB_USED / DCGM_FI_DEV_FB_FREE (MiB), DCGM_FI_DEV_POWER_USAGE (W),
  DCGM_FI_DEV_GPU_TEMP (C), DCGM_FI_DEV_SM_CLOCK (MHz), DCGM_FI_DEV_ECC_DBE_VOL_TOTAL
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from mltrain.config import PrometheusLogConfig

TRAIN_FIELDS = {  # record field -> gauge name
    "loss": "mltrain_loss",
    "tokens_per_s": "mltrain_tokens_per_second",
    "mfu": "mltrain_mfu_ratio",
    "step_time_s": "mltrain_step_time_seconds",
    "data_wait_s": "mltrain_data_wait_seconds",
}
HELP = {
    "mltrain_step": "last optimizer step logged",
    "mltrain_loss": "training loss (mean over the logging window)",
    "mltrain_val_loss": "validation loss at the last evaluation",
    "mltrain_tokens_per_second": "training throughput, all ranks",
    "mltrain_mfu_ratio": "model FLOPs utilisation (0-1)",
    "mltrain_step_time_seconds": "wall time per optimizer step",
    "mltrain_data_wait_seconds": "time per step waiting for the data loader",
    "mltrain_checkpoint_save_seconds": "duration of the last checkpoint save",
    "mltrain_checkpoint_stall_seconds": "training time blocked by the last checkpoint save",
    "mltrain_last_checkpoint_timestamp_seconds": "unix time of the last committed checkpoint",
    "mltrain_restarts": "restarts of this run (requeue or restart in place, from restarts.jsonl)",
    "mltrain_straggler_slowdown_ratio": "last straggler's compute time over the median, minus 1",
}
# dcgm-exporter field name -> (help, GpuReading attribute)
DCGM_FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL": ("GPU utilization (in %).", "util_pct"),
    "DCGM_FI_DEV_FB_USED": ("Framebuffer memory used (in MiB).", "mem_used_mib"),
    "DCGM_FI_DEV_FB_FREE": ("Framebuffer memory free (in MiB).", "mem_free_mib"),
    "DCGM_FI_DEV_POWER_USAGE": ("Power draw (in W).", "power_w"),
    "DCGM_FI_DEV_GPU_TEMP": ("GPU temperature (in C).", "temperature_c"),
    "DCGM_FI_DEV_SM_CLOCK": ("SM clock frequency (in MHz).", "sm_clock_mhz"),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("Total number of double-bit volatile ECC errors.", "ecc_uncorrected"),
}


def restarts_in(run_dir: Path) -> int:
    """The restart count `status` and `report` show (mltrain.runstats has the one definition)."""
    from mltrain import runstats

    metrics, restarts, _ = runstats.read_run_files(run_dir)
    return runstats.restarts_of(metrics, restarts)


class RestartCount:
    """`restarts_in` for a scrape every few seconds over a whole run: reads only what restarts.jsonl and
    metrics.jsonl gained since the last scrape, and metrics.jsonl only while there are no launcher records
    (the same rule as runstats.restarts_of, without re-reading a file that grows with every step)."""

    def __init__(self, run_dir: Path) -> None:
        from mltrain import rundir
        from mltrain.fsutil import JsonlTail

        self.restarts = JsonlTail(run_dir / rundir.RESTARTS_FILE)
        self.metrics = JsonlTail(run_dir / rundir.METRICS_FILE)
        self.launcher = 0  # restart actions in restarts.jsonl
        self.seen_records = False
        self.starts = 0  # trainer "start" records in metrics.jsonl

    def __call__(self) -> int:
        from mltrain import runstats

        new = self.restarts.new()
        if self.restarts.reset:
            self.launcher, self.seen_records = 0, False
        self.launcher += runstats.count_restarts(new)
        self.seen_records = self.seen_records or bool(new)
        if self.seen_records:
            return self.launcher
        new_metrics = self.metrics.new()
        if self.metrics.reset:
            self.starts = 0
        self.starts += sum(1 for r in new_metrics if r.get("kind") == "start")
        return max(0, self.starts - 1)


class NvmlCollector:
    """Per-GPU gauges read from NVML at scrape time (a custom prometheus-client collector)."""

    def __init__(self, host: str) -> None:
        from mltrain.telemetry.nvml import nvml

        self.nv = nvml()  # raises NvmlUnavailable: the caller goes on without GPU metrics
        self.host = host

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from mltrain.telemetry.nvml import read_gpus

        gpus = read_gpus(self.nv)
        for name, (help_text, attr) in DCGM_FIELDS.items():
            fam = GaugeMetricFamily(name, help_text, labels=["gpu", "UUID", "device", "model_name", "hostname"])
            for g in gpus:
                value = getattr(g, attr)
                if value is not None:
                    fam.add_metric([str(g.index), g.uuid, f"nvidia{g.index}", g.name, self.host], float(value))
            yield fam


class PrometheusExporter:
    """The /metrics endpoint of one node, and (on global rank 0) the sink for the trainer's records."""

    def __init__(self, cfg: PrometheusLogConfig, run_dir: Path, run_name: str, training: bool) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

        self.cfg = cfg
        self.run_dir = run_dir
        self.host = socket.gethostname().split(".")[0]
        self.registry = CollectorRegistry()
        self.gauges: dict[str, Any] = {}
        self.stragglers = None
        self.gpu_note = ""
        if training:
            for name, help_text in HELP.items():
                self.gauges[name] = Gauge(name, help_text, registry=self.registry)
            self.stragglers = Counter("mltrain_stragglers", "straggler events logged", registry=self.registry)
            self.gauges["mltrain_restarts"].set_function(RestartCount(run_dir))
        if cfg.gpu_metrics:
            from mltrain.telemetry.nvml import NvmlUnavailable

            try:
                self.registry.register(NvmlCollector(self.host))
            except NvmlUnavailable as e:
                self.gpu_note = f"no GPU metrics: {e}"
        self.server, self.thread = start_http_server(cfg.port, addr=cfg.addr, registry=self.registry)
        self.port = self.server.server_port
        target_host = self.host if cfg.addr in ("0.0.0.0", "::", "") else cfg.addr
        from mltrain.telemetry.file_sd import write_self_target

        self.target_file = write_self_target(run_dir, run_name, target_host, self.port)

    def set_last_checkpoint(self, ts: float) -> None:
        if "mltrain_last_checkpoint_timestamp_seconds" in self.gauges:
            self.gauges["mltrain_last_checkpoint_timestamp_seconds"].set(ts)

    def write(self, record: dict[str, Any]) -> None:
        if not self.gauges:
            return
        kind = record.get("kind")
        g = self.gauges
        if "step" in record and kind in ("train", "eval", "start"):
            g["mltrain_step"].set(record["step"])
        if kind == "train":
            for field, name in TRAIN_FIELDS.items():
                if isinstance(record.get(field), (int, float)):
                    g[name].set(record[field])
        elif kind == "eval" and isinstance(record.get("val_loss"), (int, float)):
            g["mltrain_val_loss"].set(record["val_loss"])
        elif kind == "checkpoint" and record.get("ok", True):
            if isinstance(record.get("save_s"), (int, float)):
                g["mltrain_checkpoint_save_seconds"].set(record["save_s"])
            if isinstance(record.get("stall_s"), (int, float)):
                g["mltrain_checkpoint_stall_seconds"].set(record["stall_s"])
            g["mltrain_last_checkpoint_timestamp_seconds"].set(record.get("time", time.time()))
        elif kind == "straggler" and self.stragglers is not None:
            self.stragglers.inc()
            g["mltrain_straggler_slowdown_ratio"].set(record.get("slowdown", 0.0))

    def close(self) -> None:
        if self.cfg.linger_s > 0:
            time.sleep(self.cfg.linger_s)
        self.server.shutdown()
        self.server.server_close()
        try:
            self.target_file.unlink()  # a finished run is no longer scraped
        except OSError:
            pass
