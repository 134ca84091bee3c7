"""PIPELINE.yaml: what turns one uploaded dataset version into a registered model, with no human step.

One file for both drivers (the Airflow operators and `mltrain pipeline watch`): the run config and the
cluster it trains on, where the uploaded files are read from, the eval data, the registry gate.
Relative paths are relative to this file (on the head node's disk when `ssh:` is set).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from mltrain.config import StrictModel, _read_yaml, validate_model
from mltrain.errors import ConfigError


class SshConfig(StrictModel):
    """Run every mltrain command on the cluster's head node (the Airflow worker is not on the cluster)."""

    host: str
    user: str | None = None
    port: int = Field(default=22, gt=0)
    key_file: str | None = Field(default=None, description="private key; default ssh's own lookup")
    known_hosts: str | None = Field(
        default=None,
        description="a known_hosts file holding the head node's host key (checked strictly); default ~/.ssh's",
    )
    mltrain: str = Field(default="mltrain", description="the mltrain command on the head node")
    workdir: str | None = Field(default=None, description="cd here first; relative paths are taken from it")


class PipelineDataConfig(StrictModel):
    """Where `data prepare` reads the uploaded version and where its shards go."""

    sources: list[str] = Field(
        default_factory=lambda: ["*.jsonl"],
        description="globs under the uploaded prefix (s3://.../<version>/<glob>); [] = the run config's own sources",
    )
    dir: str | None = Field(
        default=None, description="prepared shards, {run} replaced by the run name; default <run_base_dir>/data/{run}"
    )
    curated: str | None = Field(
        default=None,
        description="`data curate` output (parquet) that prepare then reads, {run} replaced by the run name; "
        "default <run_base_dir>/curated/{run}",
    )
    curate: bool | None = Field(
        default=None, description="run `data curate` first; default: when the run config has a data.curate section"
    )


class EvalStepConfig(StrictModel):
    """`mltrain eval` after training; without files, the trainer's last val_loss is the eval loss."""

    data: list[str] = Field(default_factory=list, description="text files (.txt/.jsonl/.parquet) to score")
    device: str = "auto"


class GateConfig(StrictModel):
    """A new registered version only when the eval loss passes every rule that is set."""

    max_loss: float | None = Field(default=None, description="eval loss must be below this")
    better_than_alias: str | None = Field(
        default=None, description="eval loss must be below that of the version under this alias (e.g. production)"
    )


class RegistryConfig(StrictModel):
    """The MLflow Model Registry the exported model is registered in."""

    tracking_uri: str
    registry_uri: str | None = Field(default=None, description="default: tracking_uri")
    model_name: str
    experiment: str = "mltrain"
    artifact_location: str | None = Field(default=None, description="for the experiment, when the pipeline creates it")
    alias: str | None = Field(default=None, description="set on each new version, e.g. candidate")
    log_metrics: bool = Field(default=True, description="the trainer logs its metrics to tracking_uri too")


class PipelineConfig(StrictModel):
    """One pipeline: run config + cluster, per dataset version a run named <name>-<manifest digest>."""

    run: str = Field(description="run config YAML")
    cluster: str = Field(description="Slurm cluster spec (launcher: slurm) or EKS spec (launcher: k8s)")
    name: str | None = Field(default=None, description="run name prefix; default the run config's name")
    launcher: Literal["slurm", "k8s"] = "slurm"
    k8s_kind: Literal["pytorchjob", "trainjob"] = "pytorchjob"
    ssh: SshConfig | None = None
    run_base_dir: str | None = Field(
        default=None, description="where runs/<name> lives as the pipeline sees it; default the cluster spec's"
    )
    nodes: int | None = Field(default=None, gt=0)
    set: list[str] = Field(default_factory=list, description="more --set overrides of the run config")
    data: PipelineDataConfig = Field(default_factory=PipelineDataConfig)
    eval: EvalStepConfig = Field(default_factory=EvalStepConfig)
    export_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig | None = None
    endpoint_url: str | None = Field(default=None, description="S3 endpoint (a local S3 API server, a VPC endpoint)")
    poll_s: float = Field(default=60.0, gt=0, description="seconds between status checks while training")
    markers: list[str] = Field(
        default_factory=lambda: ["_SUCCESS"],
        description="objects that only announce a finished upload: never data, ignored by verify",
    )

    @model_validator(mode="after")
    def _ssh_needs_paths(self) -> PipelineConfig:
        if self.ssh is not None and self.run_base_dir is None:
            raise ValueError("with ssh: set run_base_dir (the cluster spec is read on the head node, not here)")
        return self

    # set by load_pipeline: the directory relative paths are taken from (None over SSH: the head node's)
    _base: Path | None = None

    def path(self, p: str) -> str:
        """A path of this file as the commands see it."""
        if self.ssh is not None or self._base is None or Path(p).is_absolute() or "://" in p:
            return p
        return str((self._base / p).resolve())


def load_pipeline(path: str | Path) -> PipelineConfig:
    """PIPELINE.yaml, validated; errors name the file and the key."""
    path = Path(path)
    cfg = validate_model(PipelineConfig, _read_yaml(path), str(path))
    cfg._base = path.resolve().parent
    return cfg


def raw_run_config(cfg: PipelineConfig) -> dict:
    """The run config as written (no validation: other keys, such as data.curate, are the commands' to check)."""
    if cfg.ssh is not None:
        return {}
    try:
        return _read_yaml(Path(cfg.path(cfg.run)))
    except ConfigError:
        return {}


def has_curate(cfg: PipelineConfig) -> bool:
    """Whether `mltrain data curate` runs before prepare: data.curate of the pipeline file, else whether the
    run config has a data.curate section (read here; over SSH set it in the pipeline file)."""
    if cfg.data.curate is not None:
        return cfg.data.curate
    data = raw_run_config(cfg).get("data")
    return isinstance(data, dict) and bool(data.get("curate"))


__all__ = ["PipelineConfig", "load_pipeline", "has_curate", "raw_run_config"]
