"""From an S3 upload to a registered model, with no human step (Airflow 3, MWAA or self-run).

    wait_for_data (S3KeySensor, deferrable: `_SUCCESS` under the version's prefix)
      -> verify   (every object against the manifest `mltrain data upload` wrote)
      -> curate   (`mltrain data curate`, only when the run config has a data.curate section)
      -> prepare  (`mltrain data prepare` of the version's files)
      -> train    (submit to Slurm / Kubernetes, then wait in the triggerer through requeues)
      -> evaluate -> export -> register (MLflow Model Registry, behind the eval gate, with lineage;
                                          only with a registry: section)

Every task is idempotent: a second DAG run for the same data finds the finished run and the registered
version and does nothing. A failed training fails `train` with the cause from `mltrain status`; a retry
(or clearing the task) resubmits the same run, which resumes from its newest checkpoint.

Settings (environment variables of the scheduler, workers and triggerer, or edit the constants):
    MLTRAIN_PIPELINE           PIPELINE.yaml (see docs/pipeline.md)
    MLTRAIN_PIPELINE_DATA_URI  the default version prefix, s3://bucket/datasets/v1/ (a run's conf may set
                               data_uri: an S3 event -> Lambda -> the Airflow REST API passes the new one)
    MLTRAIN_PIPELINE_AWS_CONN  the Airflow AWS connection (default aws_default; MWAA: its execution role)
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.sdk import DAG, Param

from mltrain.integrations.airflow import (
    CurateOperator,
    EvalOperator,
    ExportOperator,
    PrepareOperator,
    RegisterOperator,
    TrainOperator,
    VerifyOperator,
)
from mltrain.integrations.pipeline_config import has_curate, load_pipeline

PIPELINE = os.environ.get("MLTRAIN_PIPELINE", "/usr/local/airflow/dags/mltrain/pipeline.yaml")
DATA_URI = os.environ.get("MLTRAIN_PIPELINE_DATA_URI", "s3://my-datasets/corpus/v1/")
AWS_CONN = os.environ.get("MLTRAIN_PIPELINE_AWS_CONN", "aws_default")
SENSOR_DEFERRABLE = os.environ.get("MLTRAIN_PIPELINE_SENSOR_DEFERRABLE", "1") == "1"
RETRIES = int(os.environ.get("MLTRAIN_PIPELINE_RETRIES", "2"))
SENSOR_POKE_S = float(os.environ.get("MLTRAIN_PIPELINE_SENSOR_POKE_S", "60"))
POLL_S = float(os.environ.get("MLTRAIN_PIPELINE_POLL_S", "0")) or None  # default: PIPELINE.yaml's poll_s

step = {"pipeline": PIPELINE, "data_uri": "{{ params.data_uri }}", "aws_conn_id": AWS_CONN}

with DAG(
    dag_id="mltrain_s3_to_registered_model",
    description="an uploaded dataset version -> verified, prepared, trained, evaluated, exported, registered",
    schedule=None,  # started per version (conf data_uri); or a schedule: the sensor waits for the upload
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=4,
    params={"data_uri": Param(DATA_URI, type="string", description="s3://bucket/prefix/<version>/")},
    default_args={"retries": RETRIES, "retry_delay": timedelta(minutes=2)},
    tags=["mltrain"],
) as dag:
    wait_for_data = S3KeySensor(
        task_id="wait_for_data",
        bucket_key="{{ params.data_uri }}_SUCCESS",
        aws_conn_id=AWS_CONN,
        deferrable=SENSOR_DEFERRABLE,
        poke_interval=SENSOR_POKE_S,
        timeout=int(timedelta(days=1).total_seconds()),
        mode="poke",
    )
    verify = VerifyOperator(task_id="verify", identity_task_id=None, retries=0, **step)
    prepare = PrepareOperator(task_id="prepare", **step)
    train = TrainOperator(task_id="train", poll_s=POLL_S, **step)
    evaluate = EvalOperator(task_id="evaluate", **step)
    export = ExportOperator(task_id="export", **step)

    cfg = load_pipeline(PIPELINE)
    if has_curate(cfg):  # the run config has a data.curate section
        wait_for_data >> verify >> CurateOperator(task_id="curate", **step) >> prepare
    else:
        wait_for_data >> verify >> prepare
    prepare >> train >> evaluate >> export
    if cfg.registry is not None:
        export >> RegisterOperator(task_id="register", **step)
