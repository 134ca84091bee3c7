"""Experiment trackers with real components: a real MLflow tracking server (the `mlflow` package's own
`mlflow server`, on 127.0.0.1, a free port) receives a training run's params, metrics and exported model,
read back through MLflow's client; Weights & Biases in offline mode writes its run files."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

pytestmark = pytest.mark.slow

mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'mltrain[mlflow]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}  # the file store starts in seconds; sqlite migrates
    log = open(tmp_path / "mlflow.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", str(tmp_path / "mlflow-store"), "--artifacts-destination", str(tmp_path / "mlflow-art")],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("mlflow server did not start:\n" + (tmp_path / "mlflow.log").read_text()[-3000:])
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=60)
    log.close()


def test_training_run_logs_to_mlflow_and_wandb_offline(tmp_path, tiny_data_dir, mlflow_server):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'mltrain[wandb]')")
    cfg = tiny_run_config(tmp_path, tiny_data_dir, "tracked", max_steps=6, log_every=2, eval_every=3)
    cfg["log"] = {
        "mlflow": {"uri": mlflow_server, "experiment": "ops-test", "log_model": True},
        "wandb": {"enabled": True, "project": "ops-test", "mode": "offline"},
    }
    path = write_config(tmp_path / "tracked.yaml", cfg)
    env = {**os.environ, "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    work = tmp_path / "cwd"
    work.mkdir()
    r = subprocess.run(mltrain_cmd("train", str(path)), env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert list(work.iterdir()) == []  # nothing in the working dir (MLflow's fluent API would open ./mlflow.db)
    assert "WARNING" not in r.stdout, r.stdout[-3000:]
    run_dir = tmp_path / "runs" / "tracked"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "6" and run.data.params["model.hidden_size"] == "64"
    loss = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == [2, 4, 6] and all(m.value > 0 for m in loss)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [3, 6]
    assert client.get_metric_history(run.info.run_id, "checkpoint_stall_s")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/config.json" in artifacts and "model/model.safetensors" in artifacts

    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((run_dir / "wandb").iterdir())
    assert list(offline[0].glob("run-*.wandb")), list(offline[0].iterdir())
