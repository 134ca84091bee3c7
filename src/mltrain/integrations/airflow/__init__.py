"""Airflow operators and the run-status trigger for the pipeline (the `airflow` extra).

Only this package imports Airflow; nothing else in mltrain imports this package, so `mltrain --help` and
the CLI never pay for it. The operators are thin: each calls one step of mltrain.integrations.pipeline,
which is also what `mltrain pipeline run|watch` calls. See examples/airflow/s3_to_registered_model.py
and docs/pipeline.md.
"""

from __future__ import annotations

from mltrain.integrations.airflow.operators import (
    CurateOperator,
    EvalOperator,
    ExportOperator,
    PrepareOperator,
    RegisterOperator,
    TrainOperator,
    VerifyOperator,
)
from mltrain.integrations.airflow.triggers import RunStatusTrigger

__all__ = [
    "CurateOperator",
    "EvalOperator",
    "ExportOperator",
    "PrepareOperator",
    "RegisterOperator",
    "RunStatusTrigger",
    "TrainOperator",
    "VerifyOperator",
]
