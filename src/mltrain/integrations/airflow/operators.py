"""One operator per pipeline step. Each builds the step's Pipeline from PIPELINE.yaml and the dataset
version's S3 URI (both templated), runs the step and returns its result as XCom. A step that already
succeeded for this data does nothing and says so in the task log (mltrain.integrations.pipeline).

The dataset's identity (its manifest digest, hence the run name) comes from the verify task's XCom;
without one (a DAG that does not verify), each operator reads the manifest itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from mltrain.errors import ConfigError, MltrainError
from mltrain.integrations.pipeline import DONE, Pipeline
from mltrain.integrations.pipeline_config import load_pipeline


def aws_from_connection(conn_id: str | None) -> tuple[Any, dict[str, str]]:
    """(S3 client, environment for the mltrain commands) from an Airflow AWS connection; (None, {}) without
    one: boto3's own chain (the MWAA execution role) then applies to both."""
    if not conn_id:
        return None, {}
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=conn_id)
    env: dict[str, str] = {}
    creds = hook.get_credentials()
    if creds is not None and creds.access_key:
        env |= {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key}
        if creds.token:
            env["AWS_SESSION_TOKEN"] = creds.token
    endpoint = hook.conn_config.endpoint_url
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    if hook.conn_config.region_name:
        env["AWS_DEFAULT_REGION"] = hook.conn_config.region_name
    return hook.get_conn(), env


class PipelineStepOperator(BaseOperator):
    """Base: `pipeline` (PIPELINE.yaml path) and `data_uri` (s3://bucket/prefix/<version>/), both templated."""

    template_fields: Sequence[str] = ("pipeline", "data_uri")
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        pipeline: str,
        data_uri: str,
        aws_conn_id: str | None = "aws_default",
        identity_task_id: str | None = "verify",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.data_uri = data_uri
        self.aws_conn_id = aws_conn_id
        self.identity_task_id = identity_task_id

    def build(self, context: Any) -> Pipeline:
        digest = None
        if self.identity_task_id and self.identity_task_id != self.task_id:
            prev = context["ti"].xcom_pull(task_ids=self.identity_task_id)
            digest = prev.get("manifest_sha256") if isinstance(prev, dict) else None
        client, env = aws_from_connection(self.aws_conn_id)
        return Pipeline(
            load_pipeline(self.pipeline),
            self.data_uri,
            manifest_sha256=digest,
            s3_client=client,
            env=env,
            log=self.log.info,
        )

    def step(self, pipe: Pipeline) -> dict[str, Any]:
        raise NotImplementedError

    def execute(self, context: Any) -> dict[str, Any]:
        """The step; mltrain's errors become the task's one-line failure (a config error is not retried)."""
        try:
            return self.step(self.build(context))
        except ConfigError as e:
            raise AirflowFailException(str(e)) from None
        except MltrainError as e:
            raise AirflowException(str(e)) from None


class VerifyOperator(PipelineStepOperator):
    """`data verify` of the uploaded version against its manifest; XCom: run_name, manifest_sha256, objects."""

    def step(self, pipe: Pipeline) -> dict[str, Any]:
        try:
            return pipe.verify()
        except MltrainError as e:  # a bad upload does not get better by retrying
            raise AirflowFailException(str(e)) from None


class CurateOperator(PipelineStepOperator):
    """`mltrain data curate RUN_YAML` (the run config's data.curate section) for this version."""

    def step(self, pipe: Pipeline) -> dict[str, Any]:
        return pipe.curate()


class PrepareOperator(PipelineStepOperator):
    """`mltrain data prepare` of the version's files into its own data dir."""

    def step(self, pipe: Pipeline) -> dict[str, Any]:
        return pipe.prepare()


class TrainOperator(PipelineStepOperator):
    """Submit the run (Slurm locally or over SSH, or Kubernetes) and defer to RunStatusTrigger until it
    finished. A finished run is not submitted again; a run with a live job is waited on; a failed or
    cancelled one (a retry or a cleared task) is submitted again under the same name and resumes from its
    newest checkpoint. XCom: run_name, job_id(s), checkpoint_step, loss."""

    def __init__(self, *, poll_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poll_s = poll_s

    def step(self, pipe: Pipeline) -> dict[str, Any]:
        from mltrain.integrations.airflow.triggers import RunStatusTrigger

        result = pipe.submit()
        if result.get("finished"):
            return result
        self.defer(
            trigger=RunStatusTrigger(
                pipeline=self.pipeline,
                data_uri=pipe.data_uri,
                manifest_sha256=pipe.manifest_sha256(),
                poll_s=self.poll_s or pipe.cfg.poll_s,
            ),
            method_name="execute_complete",
            timeout=timedelta(days=30),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("outcome") != DONE:
            msg = f"run {event.get('run_name')} failed: {event.get('cause')}"
            if event.get("state") == "config err":  # resubmitting the same config fails the same way
                raise AirflowFailException(msg)
            raise AirflowException(msg)
        pipe = self.build(context)
        result = pipe.train_result()
        self.log.info("run %s finished: step %s, loss %s", pipe.run_name, result["step"], result["loss"])
        return result


class EvalOperator(PipelineStepOperator):
    """`mltrain eval` of the newest checkpoint; XCom: eval_loss, eval_perplexity, step."""

    def step(self, pipe: Pipeline) -> dict[str, Any]:
        return pipe.evaluate()


class ExportOperator(PipelineStepOperator):
    """`mltrain export` to a Hugging Face directory; XCom: export_dir, checkpoint_step."""

    def step(self, pipe: Pipeline) -> dict[str, Any]:
        return pipe.export()


class RegisterOperator(PipelineStepOperator):
    """A new MLflow model version with lineage when eval passes the gate; skipped (with the reason) when not."""

    def step(self, pipe: Pipeline) -> dict[str, Any]:
        result = pipe.register()
        if not result.get("registered"):
            raise AirflowSkipException(f"not registered: {result.get('reason')}")
        return result
