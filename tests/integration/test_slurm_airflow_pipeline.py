"""The example DAG end to end under Airflow's dag.test(): a dataset uploaded to the local S3 API server
with `_SUCCESS` written after it, trained on the local Slurm, registered in MLflow (SQLite backend).

One DAG run per call of the driver (tests/integration/airflow_dag_driver.py, a subprocess with its own
AIRFLOW_HOME): the first is killed mid-training (scancel) and must fail `train` with the cause; the same
DAG run cleared and run again resumes the run from its checkpoint and registers the model with its
lineage; a third DAG run for the same data starts no second training and no second version.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest
from slurm_fixture import ROOT, records, wait_step

pytestmark = [pytest.mark.slurm, pytest.mark.airflow]

pytest.importorskip("airflow", reason="apache-airflow is not installed (pip install 'mltrain[airflow]')")
pytest.importorskip("mlflow", reason="mlflow is not installed (pip install 'mltrain[mlflow]')")

DRIVER = Path(__file__).with_name("airflow_dag_driver.py")
DAG_FILE = ROOT / "examples" / "airflow" / "s3_to_registered_model.py"
DATE = "2026-12-01T00:00:00+00:00"

RUN_YAML = """
name: tiny-lm
base_dir: .
seed: 3
model: {{preset: tiny, n_layers: 2, hidden_size: 64, n_heads: 4, n_kv_heads: 2, ffn_hidden_size: 128,
        vocab_size: 512}}
data: {{sources: [unused], dir: unused, shard_tokens: 65536, val_fraction: 0.05}}
train: {{parallel: none, device: cpu, seq_len: 32, micro_batch_size: 4, max_steps: 30, warmup_steps: 2,
        eval_every: 0, log_every: 1, tensorboard: false}}
checkpoint: {{every_steps: 5, keep_last: 2}}
launch: {{max_restarts: 1, requeue_grace_s: 30}}
"""

PIPELINE_YAML = """
run: run.yaml
cluster: local.yaml
nodes: 1
data: {{sources: ["*.jsonl"]}}
eval: {{data: [eval.txt], device: cpu}}
gate: {{max_loss: 50.0}}
registry:
  tracking_uri: sqlite:///{root}/mlflow.db
  model_name: tiny-lm
  experiment: pipeline-test
  artifact_location: {root}/mlartifacts
  alias: candidate
endpoint_url: {endpoint}
poll_s: 1
"""


def _corpus(n_bytes: int) -> list[str]:
    """Documents from the standard library's own sources (the same text on every machine with this Python)."""
    docs: list[str] = []
    total = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(errors="replace")
        docs.append(text)
        total += len(text)
        if total >= n_bytes:
            break
    return docs


@pytest.fixture(scope="module")
def flow(tmp_path_factory, moto_s3, local_slurm):
    import boto3

    from mltrain.storage.client import S3Options
    from mltrain.storage.transfer import sync

    root = tmp_path_factory.mktemp("airflow-pipeline")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    bucket = "pipeline-" + hashlib.sha256(str(root).encode()).hexdigest()[:10]
    s3.create_bucket(Bucket=bucket)
    upload = root / "upload"
    upload.mkdir()
    docs = _corpus(80_000)
    for i in range(3):
        lines = [json.dumps({"text": d}) for d in docs[i::3]]
        (upload / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    data_uri = f"s3://{bucket}/corpus/v1/"
    sync(str(upload), data_uri, S3Options(moto_s3), progress=False)  # `_SUCCESS` follows once the DAG waits
    (root / "eval.txt").write_text(_corpus(240_000)[-1][:4000])
    (root / "run.yaml").write_text(RUN_YAML.format())
    spec = (ROOT / "configs/clusters/local.yaml").read_text().replace("run_base_dir: .", f"run_base_dir: {root}")
    (root / "local.yaml").write_text(spec)
    (root / "pipeline.yaml").write_text(PIPELINE_YAML.format(root=root, endpoint=moto_s3))
    dags = root / "dags"
    dags.mkdir()
    (dags / DAG_FILE.name).write_text(DAG_FILE.read_text())
    home = root / "airflow"
    conn = {"conn_type": "aws", "login": "testing", "password": "testing",
            "extra": {"endpoint_url": moto_s3, "region_name": "us-east-1"}}  # fmt: skip
    airflow_env = {
        **os.environ,
        **env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW_CONN_AWS_PIPELINE": json.dumps(conn),
        "MLTRAIN_PIPELINE": str(root / "pipeline.yaml"),
        "MLTRAIN_PIPELINE_DATA_URI": data_uri,
        "MLTRAIN_PIPELINE_AWS_CONN": "aws_pipeline",
        # poke mode: the deferrable S3 sensor's trigger needs aiobotocore, which this venv does not have
        "MLTRAIN_PIPELINE_SENSOR_DEFERRABLE": "0",
        "MLTRAIN_PIPELINE_SENSOR_POKE_S": "1",
        "MLTRAIN_PIPELINE_RETRIES": "0",
        "MLTRAIN_FAULT_STEP_S": "0.1",  # every step at least this long: the kill lands mid-training
        "OMP_NUM_THREADS": "1",  # the DAG's own torch work (eval) as the job's ranks: no threads spinning for cores
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    p = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=airflow_env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    yield {"root": root, "env": airflow_env, "data_uri": data_uri, "s3": s3, "bucket": bucket}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _driver(flow, runs: list[dict]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(flow["root"] / "dags" / DAG_FILE.name), json.dumps(runs)],
        env=flow["env"],
        cwd=flow["root"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _results(proc: subprocess.Popen, timeout_s: float) -> tuple[list[dict], str]:
    out, _ = proc.communicate(timeout=timeout_s)
    print(out[-20000:])  # shown when the test fails
    results = [json.loads(line[len("RESULT ") :]) for line in out.splitlines() if line.startswith("RESULT ")]
    return results, out


def _run_dir(flow) -> Path:
    runs = list((flow["root"] / "runs").glob("tiny-lm-*")) if (flow["root"] / "runs").is_dir() else []
    return runs[0] if runs else Path("/nonexistent")


def _sensor_state(flow) -> str | None:
    """The S3 sensor's task state in Airflow's metadata DB (SQLite under the test's AIRFLOW_HOME)."""
    import sqlite3

    try:
        with sqlite3.connect(flow["root"] / "airflow" / "airflow.db", timeout=5) as db:
            row = db.execute("SELECT state FROM task_instance WHERE task_id = 'wait_for_data'").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _kill_when_checkpointed(flow, done: dict) -> None:
    """Write `_SUCCESS` (the upload is complete) once the DAG runs, then scancel the run's job once it trained
    past its first checkpoint (what a dead node would do)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _sensor_state(flow) not in ("deferred", "running"):
        time.sleep(0.2)
    time.sleep(2)  # the sensor has looked at least once and found nothing
    flow["s3"].put_object(Bucket=flow["bucket"], Key="corpus/v1/_SUCCESS", Body=b"")
    done["success_at"] = time.time()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (_run_dir(flow) / "slurm" / "jobs.jsonl").exists():
        time.sleep(0.2)
    run = _run_dir(flow)
    wait_step(run, 8, timeout_s=180)
    job = [r for r in records(run / "slurm" / "jobs.jsonl") if r.get("event") == "submit"][-1]["job_id"]
    subprocess.run(["scancel", job], check=True)
    done["job"] = job


def test_dag_trains_registers_and_recovers(flow):
    from mlflow.tracking import MlflowClient

    # 1. the upload is there; the run is killed mid-training: `train` fails with the cause from mltrain status
    killed: dict = {}
    proc = _driver(flow, [{"logical_date": DATE}])
    killer = threading.Thread(target=_kill_when_checkpointed, args=(flow, killed), daemon=True)
    killer.start()
    results, out = _results(proc, 400)
    killer.join(timeout=5)
    assert killed.get("job"), out[-4000:]
    assert len(results) == 1, out[-4000:]
    first = results[0]
    assert first["state"] == "failed", (first, out[-4000:])
    tasks = first["tasks"]
    assert tasks["wait_for_data"] == tasks["verify"] == tasks["prepare"] == "success", tasks
    assert first["ends"]["wait_for_data"] >= killed["success_at"]  # the DAG waited for the upload's `_SUCCESS`
    assert tasks["train"] == "failed" and tasks["evaluate"] in ("upstream_failed", "None"), tasks
    run = _run_dir(flow)
    assert f"run {run.name} failed: cancelled" in out, out[-4000:]
    assert first["xcom"]["verify"]["run_name"] == run.name
    ckpt = max(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*") if p.name[5:].isdigit())
    assert ckpt >= 5

    # 2. the same DAG run, cleared and run again: the finished steps say so; the run resumes from its checkpoint;
    # 3. a second DAG run for the same data: nothing trains again, nothing is registered again
    proc = _driver(flow, [{"logical_date": DATE}, {"logical_date": "2026-12-02T00:00:00+00:00"}])
    results, out = _results(proc, 400)
    assert len(results) == 2 and [r["state"] for r in results] == ["success", "success"], out[-6000:]
    again, third = results
    assert "already verified" in out and "already prepared" in out, out[-6000:]
    submits = [r for r in records(run / "slurm" / "jobs.jsonl") if r.get("event") == "submit"]
    assert len(submits) == 2 and submits[0]["job_id"] == killed["job"], submits
    starts = [r for r in records(run / "metrics.jsonl") if r.get("kind") == "start"]
    assert len(starts) == 2 and starts[-1]["step"] == ckpt, starts
    train = again["xcom"]["train"]
    assert train["finished"] and train["checkpoint_step"] == 30 and train["job_ids"] == [s["job_id"] for s in submits]
    assert "already finished" in out and third["xcom"]["train"]["job_ids"] == train["job_ids"]
    ev = again["xcom"]["evaluate"]
    assert 0 < ev["eval_loss"] < 50 and ev["checkpoint_step"] == 30

    client = MlflowClient(tracking_uri=f"sqlite:///{flow['root']}/mlflow.db")
    versions = client.search_model_versions("name='tiny-lm'")
    assert len(versions) == 1, versions
    mv = versions[0]
    t = mv.tags
    manifest = flow["s3"].get_object(Bucket=flow["bucket"], Key="corpus/v1/.mltrain-manifest.json")["Body"].read()
    assert t["mltrain.data.s3_uri"] == flow["data_uri"]
    assert t["mltrain.data.manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    assert run.name == "tiny-lm-" + t["mltrain.data.manifest_sha256"][:12]
    assert t["mltrain.job_ids"] == ",".join(s["job_id"] for s in submits) and t["mltrain.cluster"] == "local.yaml"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert t["mltrain.git_commit"].split("-")[0] == head  # the checkout of the code that trained (mltrain's)
    assert float(t["mltrain.eval_loss"]) == pytest.approx(ev["eval_loss"])
    assert "tiny-lm" in t["mltrain.run_config"] and t["mltrain.checkpoint_step"] == "30"
    assert client.get_model_version_by_alias("tiny-lm", "candidate").version == mv.version
    assert again["xcom"]["register"]["version"] == str(mv.version)
    mlrun = client.get_run(mv.run_id)  # the trainer's own MLflow run, with its training metrics
    assert mlrun.info.run_id == (run / "mlflow_run_id").read_text().strip()
    assert [m.step for m in client.get_metric_history(mv.run_id, "loss")][-1] == 30
    assert mlrun.data.metrics["eval_loss"] == pytest.approx(ev["eval_loss"])
    assert "already holds run" in out or "already registered" in out
