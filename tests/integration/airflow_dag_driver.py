"""Runs the example DAG with dag.test() in its own process (Airflow reads its settings from the environment
at import, so it must not share a process with other tests): `python airflow_dag_driver.py DAG_FILE RUNS_JSON`.

RUNS_JSON is a list of {"logical_date": ISO, "conf": {...}}; each is one dag.test() call (the same logical
date twice = the DAG run cleared and run again, as `airflow tasks clear` does). After each call one line
`RESULT {json}` on stdout: the DagRun's state, every task's state and end time, and their XComs.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import datetime


def main() -> None:
    dag_file, runs = sys.argv[1], json.loads(sys.argv[2])
    spec = importlib.util.spec_from_file_location("pipeline_dag", dag_file)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dag = mod.dag
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.settings import Session

    for run in runs:
        dr = dag.test(logical_date=datetime.fromisoformat(run["logical_date"]), run_conf=run.get("conf"))
        with Session() as s:
            tis = s.query(TaskInstance).filter(TaskInstance.dag_id == dag.dag_id, TaskInstance.run_id == dr.run_id)
            states = {ti.task_id: str(ti.state) for ti in tis}
            ends = {ti.task_id: ti.end_date.timestamp() for ti in tis if ti.end_date is not None}
            xcoms = {
                x.task_id: XComModel.deserialize_value(x)
                for x in s.query(XComModel).filter(XComModel.dag_id == dag.dag_id, XComModel.run_id == dr.run_id)
                if x.key == "return_value"
            }
        print(
            "RESULT " + json.dumps({"state": str(dr.state), "tasks": states, "ends": ends, "xcom": xcoms}, default=str),
            flush=True,
        )


if __name__ == "__main__":
    main()
