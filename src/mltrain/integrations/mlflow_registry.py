"""The exported model as a version in the MLflow Model Registry, with its lineage, behind an eval gate.

The trainer already logs params and metrics to an MLflow run (telemetry.trackers.MlflowSink, its id in
`<run>/mlflow_run_id`; the pipeline points log.mlflow.uri at the registry's tracking server). This adds
to that same run the eval metrics, the resolved run config and the exported Hugging Face directory, then
creates a model version from it whose tags are the lineage: data S3 URI and manifest digest, run config
digest, git commit, cluster, every job id, eval metrics. The gate decides first: no version is created
for a model that does not pass it (gate.max_loss; gate.better_than_alias: below the eval loss of the
version under that alias, e.g. production).
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

from mltrain.integrations.pipeline_config import GateConfig, RegistryConfig
from mltrain.integrations.pipeline_runner import PipelineError

if TYPE_CHECKING:
    from mltrain.integrations.pipeline import Pipeline

TAG = "mltrain."
TAG_VALUE_MAX = 5000  # MLflow's limit on a model version tag value


def client_for(reg: RegistryConfig) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=reg.tracking_uri, registry_uri=reg.registry_uri or reg.tracking_uri)


def ensure_experiment(reg: RegistryConfig, client: Any = None) -> str:
    """The experiment the trainer logs to, created here first so its artifact location is the pipeline's
    (the trainer would create it with MLflow's default, relative to its working directory)."""
    client = client or client_for(reg)
    exp = client.get_experiment_by_name(reg.experiment)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(reg.experiment, artifact_location=reg.artifact_location)


def alias_loss(client: Any, model_name: str, alias: str) -> tuple[str, float | None] | None:
    """(version, its eval loss) of the version under `alias`; None when no version has that alias."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    raw = (mv.tags or {}).get(TAG + "eval_loss")
    try:
        return str(mv.version), float(raw) if raw is not None else None
    except ValueError:
        return str(mv.version), None


def check_gate(gate: GateConfig, loss: float, client: Any, model_name: str) -> tuple[bool, str]:
    """(passes, why) for an eval loss under the configured rules."""
    if gate.max_loss is not None and not loss < gate.max_loss:
        return False, f"eval loss {loss:.4f} is not below gate.max_loss {gate.max_loss}"
    if gate.better_than_alias:
        cur = alias_loss(client, model_name, gate.better_than_alias)
        if cur is not None and cur[1] is not None and not loss < cur[1]:
            return False, (
                f"eval loss {loss:.4f} is not below {cur[1]:.4f} of version {cur[0]} "
                f"({model_name}@{gate.better_than_alias})"
            )
        if cur is not None and cur[1] is None:
            return False, f"version {cur[0]} ({model_name}@{gate.better_than_alias}) has no {TAG}eval_loss to beat"
    return True, "passed" + (f" (below {gate.max_loss})" if gate.max_loss is not None else "")


def lineage(pipe: Pipeline, train: dict[str, Any], ev: dict[str, Any], config_text: str) -> dict[str, str]:
    """The model version's tags: where its data, code, config and jobs came from, and how it scored."""
    sub = pipe.done("submit") or {}
    ver = pipe.done("verify") or {}
    tags = {
        "run_name": pipe.run_name,
        "run_dir": pipe.run_dir,
        "data.s3_uri": pipe.data_uri,
        "data.manifest_sha256": ver.get("manifest_sha256") or pipe.manifest_sha256(),
        "data.dir": pipe.data_dir,
        "run_config.sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "git_commit": sub.get("git_commit") or "unknown",
        "version": _mltrain_version(),
        "launcher": pipe.cfg.launcher,
        "cluster": pipe.cfg.cluster,
        "job_id": str(train.get("job_id") or ""),
        "job_ids": ",".join(train.get("job_ids") or []),
        "checkpoint_step": str(train.get("checkpoint_step")),
        "eval_loss": repr(float(ev["eval_loss"])),
        "eval_perplexity": repr(float(ev["eval_perplexity"])),
        "eval_files": ",".join(ev.get("eval_files") or []) or "val split (trainer's val_loss)",
    }
    if train.get("loss") is not None:
        tags["train_loss"] = repr(float(train["loss"]))
    if 0 < len(config_text) <= TAG_VALUE_MAX:
        tags["run_config"] = config_text
    return {TAG + k: v[:TAG_VALUE_MAX] for k, v in tags.items()}


def _mltrain_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mltrain")
    except PackageNotFoundError:
        return "unknown"


def find_version(client: Any, model_name: str, run_name: str, digest: str) -> Any | None:
    """A version already registered for this run and data (a rerun of the register step)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{model_name}'")
    except MlflowException:
        return None
    for mv in versions:
        t = mv.tags or {}
        if t.get(TAG + "run_name") == run_name and t.get(TAG + "data.manifest_sha256") == digest:
            return mv
    return None


def register_version(pipe: Pipeline, client: Any = None) -> dict[str, Any]:
    """Gate, then one model version with lineage (none when a version for this run and data exists)."""
    reg = pipe.cfg.registry
    if reg is None:
        raise PipelineError("register: the pipeline has no registry: section")
    ev, ex = pipe.done("eval"), pipe.done("export")
    if ev is None or ex is None:
        raise PipelineError(f"register (run {pipe.run_name}): eval and export have not succeeded yet")
    client = client or client_for(reg)
    base = {"model_name": reg.model_name, "run_name": pipe.run_name, "eval_loss": ev["eval_loss"]}
    digest = pipe.manifest_sha256()
    found = find_version(client, reg.model_name, pipe.run_name, digest)
    if found is not None:
        pipe.log(f"register: {reg.model_name} version {found.version} already holds run {pipe.run_name}")
        return {**base, "registered": True, "version": str(found.version), "run_id": found.run_id}
    ok, why = check_gate(pipe.cfg.gate, float(ev["eval_loss"]), client, reg.model_name)
    if not ok:
        pipe.log(f"register: not registered: {why}")
        return {**base, "registered": False, "reason": why}
    train = pipe.train_result()
    config_text = pipe.run_config_text()
    tags = lineage(pipe, train, ev, config_text)
    run_id = pipe.mlflow_run_id()
    if run_id is None:  # the trainer did not log to this tracking server: a run for the model alone
        exp = ensure_experiment(reg, client)
        run_id = client.create_run(exp, run_name=pipe.run_name).info.run_id
    step = int(ev.get("step") or 0)
    client.log_metric(run_id, "eval_loss", float(ev["eval_loss"]), step=step)
    client.log_metric(run_id, "eval_perplexity", float(ev["eval_perplexity"]), step=step)
    for k, v in tags.items():
        if k != TAG + "run_config":
            client.set_tag(run_id, k, v)
    if config_text:
        client.log_text(run_id, config_text, "mltrain/config.yaml")
    export_dir = ex["export_dir"]
    if os.path.isdir(export_dir):
        client.log_artifacts(run_id, export_dir, artifact_path="model")
        source = client.get_run(run_id).info.artifact_uri.rstrip("/") + "/model"
    else:  # exported on the head node (ssh:): the version points at the export on the cluster's storage
        source = export_dir
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(reg.model_name)
    except MlflowException:
        client.create_registered_model(reg.model_name, description="trained and registered by mltrain pipeline")
    mv = client.create_model_version(
        reg.model_name,
        source,
        run_id=run_id,
        tags=tags,
        description=f"run {pipe.run_name} on {pipe.data_uri} (manifest {digest[:12]}); eval loss {ev['eval_loss']:.4f}",
    )
    if reg.alias:
        client.set_registered_model_alias(reg.model_name, reg.alias, mv.version)
    pipe.log(
        f"register: {reg.model_name} version {mv.version} from run {pipe.run_name} "
        f"(eval loss {ev['eval_loss']:.4f}, gate {why})" + (f", alias {reg.alias}" if reg.alias else "")
    )
    return {**base, "registered": True, "version": str(mv.version), "run_id": run_id, "source": source}


__all__ = ["check_gate", "ensure_experiment", "register_version", "lineage", "client_for"]
