"""The example DAG as Airflow parses it (in a subprocess: Airflow reads its settings at import): the steps
in order, the S3 sensor on the version's `_SUCCESS`, curate only when the run config has data.curate and
register only with a registry."""

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
for name, pipe in json.loads(sys.argv[1]).items():
    os.environ["MLTRAIN_PIPELINE"] = pipe
    spec = importlib.util.spec_from_file_location("dag_" + name, sys.argv[2])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dag = mod.dag
    order = [t.task_id for t in dag.topological_sort()]
    sensor = dag.get_task("wait_for_data")
    out[name] = {"order": order, "key": sensor.bucket_key, "deferrable": sensor.deferrable,
                 "train": type(dag.get_task("train")).__name__}
print("RESULT " + json.dumps(out))
"""


def test_example_dag_steps_and_curate_only_when_configured(tmp_path):
    pipes = {}
    registry = "registry: {tracking_uri: 'sqlite:///m.db', model_name: lm}\n"
    for name, data, more in (("plain", "{dir: d}", ""), ("curated", "{dir: d, curate: {dedup: true}}", registry)):
        (tmp_path / f"{name}.yaml").write_text(f"name: lm\ndata: {data}\n")
        (tmp_path / f"{name}-pipeline.yaml").write_text(f"run: {name}.yaml\ncluster: local.yaml\n{more}")
        pipes[name] = str(tmp_path / f"{name}-pipeline.yaml")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    dag_file = ROOT / "examples" / "airflow" / "s3_to_registered_model.py"
    p = subprocess.run([sys.executable, "-c", CODE, json.dumps(pipes), str(dag_file)], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    got = json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT ") :])
    steps = ["wait_for_data", "verify", "prepare", "train", "evaluate", "export"]
    assert got["plain"]["order"] == steps  # no registry: section, no register task
    assert got["curated"]["order"] == [*steps[:2], "curate", *steps[2:], "register"]
    assert got["plain"]["key"] == "{{ params.data_uri }}_SUCCESS" and got["plain"]["deferrable"] is True
    assert got["plain"]["train"] == "TrainOperator"
