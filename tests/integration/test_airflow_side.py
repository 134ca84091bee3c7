"""The Airflow side in one subprocess (Airflow reads its settings at import, and importing it costs seconds):

- the example DAG as Airflow parses it: the steps in order, the S3 sensor on the version's `_SUCCESS`, curate
  only when the run config has data.curate and register only with a registry;
- RunStatusTrigger as the triggerer runs it, rebuilt from its serialized form: it keeps waiting through a
  running job and the batch script's requeue, survives a passing failure to read the status, and fires
  once: done, or failed with the status line as the cause.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from slurm_fixture import ROOT

pytestmark = pytest.mark.airflow

pytest.importorskip("airflow", reason="apache-airflow is not installed (pip install 'mltrain[airflow]')")

CODE = """
import importlib.util, json, os, sys
out = {}
for name, pipe in json.loads(sys.argv[1])["dags"].items():
    os.environ["MLTRAIN_PIPELINE"] = pipe
    spec = importlib.util.spec_from_file_location("dag_" + name, sys.argv[2])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dag = mod.dag
    order = [t.task_id for t in dag.topological_sort()]
    sensor = dag.get_task("wait_for_data")
    out[name] = {"order": order, "key": sensor.bucket_key, "deferrable": sensor.deferrable,
                 "train": type(dag.get_task("train")).__name__}
dag_out = out

import asyncio
from airflow.sdk._shared.module_loading import import_string
from mltrain.integrations import pipeline as P
from mltrain.integrations.airflow.triggers import RunStatusTrigger

SEQS = {
    "recovered": [{"state": "running", "running": True, "job_id": "5"},
                  RuntimeError("squeue timed out"),
                  {"state": "requeued", "job_id": "5", "explanation": "requeued after hang, waiting to start"},
                  {"state": "hang", "scheduler_state": "PENDING", "job_id": "5", "explanation": "hang"},
                  {"state": "done", "job_id": "5", "explanation": "finished"}],
    "killed": [{"state": "running", "running": True, "job_id": "5"},
               {"state": "cancelled", "job_id": "5", "explanation": "cancelled; a new submit resumes from step 10"}],
}
out = {}
for name, seq in SEQS.items():
    def status(self, seq=seq):
        item = seq.pop(0)
        if isinstance(item, Exception):
            raise item
        return item
    P.Pipeline.status = status
    cls, kwargs = RunStatusTrigger(pipeline=json.loads(sys.argv[1])["trigger"], data_uri="s3://b/v1/", manifest_sha256="ab" * 32,
                                   poll_s=0.01).serialize()
    trigger = import_string(cls)(**kwargs)

    async def first():
        events = [e.payload async for e in trigger.run()]
        return events

    out[name] = {"events": asyncio.run(first()), "left": len(seq), "cls": cls}
print("RESULT " + json.dumps({"dags": dag_out, "trigger": out}))
"""


@pytest.fixture(scope="module")
def airflow_result(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("airflow-side")
    pipes = {}
    registry = "registry: {tracking_uri: 'sqlite:///m.db', model_name: lm}\n"
    for name, data, more in (("plain", "{dir: d}", ""), ("curated", "{dir: d, curate: {dedup: true}}", registry)):
        (tmp_path / f"{name}.yaml").write_text(f"name: lm\ndata: {data}\n")
        (tmp_path / f"{name}-pipeline.yaml").write_text(f"run: {name}.yaml\ncluster: local.yaml\n{more}")
        pipes[name] = str(tmp_path / f"{name}-pipeline.yaml")
    trigger_pipe = tmp_path / "pipeline.yaml"
    trigger_pipe.write_text("name: lm\nrun: run.yaml\ncluster: local.yaml\nrun_base_dir: /shared\n")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    dag_file = ROOT / "examples" / "airflow" / "s3_to_registered_model.py"
    args = json.dumps({"dags": pipes, "trigger": str(trigger_pipe)})
    p = subprocess.run([sys.executable, "-c", CODE, args, str(dag_file)], env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])


def test_example_dag_steps_curate_and_register_only_when_configured(airflow_result):
    got = airflow_result["dags"]
    steps = ["wait_for_data", "verify", "prepare", "train", "evaluate", "export"]
    assert got["plain"]["order"] == steps  # no registry: section, no register task
    assert got["curated"]["order"] == [*steps[:2], "curate", *steps[2:], "register"]
    assert got["plain"]["key"] == "{{ params.data_uri }}_SUCCESS" and got["plain"]["deferrable"] is True
    assert got["plain"]["train"] == "TrainOperator"


def test_trigger_waits_through_requeues_and_fires_once(airflow_result):
    ok, killed = airflow_result["trigger"]["recovered"], airflow_result["trigger"]["killed"]
    assert ok["cls"] == "mltrain.integrations.airflow.triggers.RunStatusTrigger"
    assert ok["left"] == 0 and ok["events"] == [
        {"outcome": "done", "cause": "finished", "run_name": "lm-" + "ab" * 6, "state": "done"}
    ]
    assert killed["left"] == 0 and len(killed["events"]) == 1
    assert killed["events"][0]["outcome"] == "failed"
    assert killed["events"][0]["cause"] == "cancelled; a new submit resumes from step 10"
