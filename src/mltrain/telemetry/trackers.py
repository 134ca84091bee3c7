"""Experiment trackers as MetricsWriter sinks: MLflow and Weights & Biases (optional extras).

Params are the resolved run config (flattened, `train.lr`), metrics are the trainer's records
(`loss`, `tokens_per_s`, `val_loss`, ...; other kinds as `<kind>_<field>`). A run keeps one tracker
run across restarts: its id is stored in the run dir and resumed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from mltrain.config import RunConfig
from mltrain.fsutil import atomic_write

PLAIN_KINDS = ("train", "eval")


def flat_params(cfg: RunConfig) -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(d: Any, prefix: str) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                walk(v, f"{prefix}.{k}" if prefix else k)
        else:
            out[prefix] = str(d)[:500]  # MLflow's param value limit

    walk(cfg.model_dump(mode="json"), "")
    return out


def numeric_fields(record: dict[str, Any]) -> dict[str, float]:
    kind = record.get("kind", "train")
    prefix = "" if kind in PLAIN_KINDS else f"{kind}_"
    return {
        f"{prefix}{k}": float(v)
        for k, v in record.items()
        if k not in ("step", "time", "kind", "rank") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _stored_id(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


class MlflowSink:
    """Logs to an MLflow tracking server (`log.mlflow.uri`)."""

    ID_FILE = "mlflow_run_id"

    def __init__(self, cfg: RunConfig) -> None:
        import mlflow
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.client = MlflowClient(tracking_uri=cfg.log.mlflow.uri)
        exp = self.client.get_experiment_by_name(cfg.log.mlflow.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(cfg.log.mlflow.experiment)
        id_file = cfg.run_dir / self.ID_FILE
        run_id = _stored_id(id_file)
        if run_id is None:
            run_id = self.client.create_run(
                exp_id, run_name=cfg.name, tags={"mltrain.run_dir": str(cfg.run_dir)}
            ).info.run_id
            atomic_write(id_file, run_id + "\n")
            params = [mlflow.entities.Param(k, v) for k, v in flat_params(cfg).items()]
            for i in range(0, len(params), 100):  # log_batch takes at most 100 params
                self.client.log_batch(run_id, params=params[i : i + 100])
        self.run_id = run_id
        self._metric = mlflow.entities.Metric
        self.finished_ok = False
        self._pending: list[Any] = []

    def write(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "exit":
            self.finished_ok = record.get("reason") == "done"
            return
        values = numeric_fields(record)
        if not values or "step" not in record:
            return
        ts = int(record.get("time", 0) * 1000)
        metrics = [self._metric(k, v, ts, int(record["step"])) for k, v in values.items()]
        # Asynchronous: the step loop never waits on the tracking server (awaited in close()).
        op = self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)
        if op is not None:
            self._pending.append(op)

    def close(self) -> None:
        for op in self._pending:  # (not mlflow.flush_async_logging: the fluent API opens ./mlflow.db)
            op.wait()
        self._pending = []
        if self.cfg.log.mlflow.log_model and self.finished_ok:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "model"
                # A separate process: exporting reads the checkpoint with torch.distributed.checkpoint,
                # which must not join this trainer's process group.
                cmd = [sys.executable, "-m", "mltrain", "export", str(self.cfg.run_dir), "--hf", str(out)]
                subprocess.run(cmd, check=True, capture_output=True, text=True)
                self.client.log_artifacts(self.run_id, str(out), artifact_path="model")
        self.client.set_terminated(self.run_id, status="FINISHED" if self.finished_ok else "KILLED")


class WandbSink:
    """Logs to Weights & Biases; `mode: offline` writes run files under <run>/wandb (sync them later)."""

    ID_FILE = "wandb_run_id"

    def __init__(self, cfg: RunConfig) -> None:
        import wandb

        w = cfg.log.wandb
        id_file = cfg.run_dir / self.ID_FILE
        run_id = _stored_id(id_file) or uuid.uuid4().hex[:12]  # W&B ids: [a-z0-9]
        atomic_write(id_file, run_id + "\n")
        self.run = wandb.init(
            project=w.project,
            entity=w.entity,
            name=cfg.name,
            id=run_id,
            resume="allow",
            mode=w.mode,
            dir=str(cfg.run_dir),
            config=cfg.model_dump(mode="json"),
        )

    def write(self, record: dict[str, Any]) -> None:
        values = numeric_fields(record)
        if values and "step" in record:
            self.run.log(values, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()
