"""The fleet file: one cluster, several models trained at once, and the constraints of the split.

`mltrain plan FLEET.yaml` reads it; `mltrain fleet submit` submits one job per model from it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from mltrain.cluster.capacity import Capacity
from mltrain.cluster.catalog import InstanceType
from mltrain.cluster.reliability import Failures
from mltrain.config import (
    MODEL_PRESETS,
    ModelConfig,
    StrictModel,
    _read_yaml,
    apply_overrides,
    refuse_other_kind,
    validate_model,
)
from mltrain.errors import ConfigError

_SUFFIX = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_count(value: Any) -> Any:
    """Accept 250e9, '250e9', '250B', '1.5T', '300M' (YAML reads 250e9 as a string)."""
    if isinstance(value, str):
        text = value.strip().replace("_", "").replace(",", "")
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)", text)
        if not m:
            raise ValueError(f"{value!r} is not a count (use e.g. 250e9, 250B, 1.5T)")
        return float(m.group(1)) * _SUFFIX.get(m.group(2).lower(), 1.0)
    return value


class FleetCluster(StrictModel):
    """The one cluster every model of the fleet runs on at the same time."""

    instance_type: str
    nodes: int = Field(gt=0)
    region: str | None = None
    price_per_node_hour: float | None = Field(default=None, ge=0, description="override the catalog price")


class FleetModel(StrictModel):
    """One model to train: its size (preset, arch or explicit numbers), tokens and expected MFU."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    preset: str | None = Field(default=None, description="a name from mltrain.config.MODEL_PRESETS")
    arch: dict[str, Any] | None = Field(default=None, description="ModelConfig fields (hidden_size, n_layers, ...)")
    params: float | None = Field(default=None, gt=0, description="explicit parameter count (with n_layers, hidden)")
    n_layers: int | None = Field(default=None, gt=0)
    hidden_size: int | None = Field(default=None, gt=0)
    vocab_size: int | None = Field(default=None, gt=0)
    tokens: float = Field(gt=0, description="tokens to train, e.g. 250e9 or '250B'")
    seq_len: int = Field(default=4096, gt=0)
    micro_batch_size: int = Field(
        default=1,
        gt=0,
        description="sequences per data-parallel rank per micro-step (per pipeline micro batch when the layout "
        "has pp > 1: the run's train.micro_batch_size is then this x pp_microbatches)",
    )
    activation_checkpointing: bool = False
    fit: Literal["fsdp", "layout"] = Field(
        default="fsdp",
        description="node count that fits: flat FSDP's, or the planner's layout's (tp, cp, pp, checkpointing)",
    )
    mfu: float | None = Field(default=None, gt=0, le=1, description="expected model FLOPs utilisation")
    bench_result: str | None = Field(default=None, description="bench JSON / metrics.jsonl to read the MFU from")
    checkpoint_result: str | None = Field(
        default=None,
        description="a run's metrics.jsonl (or run dir) or a bench/checkpoint.py JSON to read the save seconds from",
    )
    min_nodes: int | None = Field(default=None, gt=0)
    max_nodes: int | None = Field(default=None, gt=0)
    deadline_days: float | None = Field(default=None, gt=0)
    run_config: str | None = Field(default=None, description="run YAML for `mltrain fleet submit`")
    capacity: Capacity | None = Field(default=None, description="this model's own capacity (default: the fleet's)")

    @field_validator("tokens", "params", mode="before")
    @classmethod
    def _parse_counts(cls, v: Any) -> Any:
        return parse_count(v)

    @model_validator(mode="after")
    def _check(self) -> FleetModel:
        given = [k for k in ("preset", "arch", "params") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of preset, arch or params (got {', '.join(given) or 'none'})")
        if self.preset is not None and self.preset not in MODEL_PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; known: {', '.join(MODEL_PRESETS)}")
        if self.arch is not None:
            try:
                ModelConfig.model_validate(self.arch)
            except ValidationError as e:
                parts = [f"arch.{'.'.join(str(x) for x in err['loc']) or '(all)'}: {err['msg']}" for err in e.errors()]
                raise ValueError("; ".join(parts)) from None
        if self.params is not None and (self.n_layers is None or self.hidden_size is None):
            raise ValueError("params needs n_layers and hidden_size too (for activations and attention FLOPs)")
        if (self.mfu is None) == (self.bench_result is None):
            raise ValueError("give exactly one of mfu or bench_result")
        if self.min_nodes and self.max_nodes and self.min_nodes > self.max_nodes:
            raise ValueError(f"min_nodes {self.min_nodes} > max_nodes {self.max_nodes}")
        return self

    def architecture(self) -> ModelConfig | None:
        """The full architecture when known (preset or arch); None for explicit `params`."""
        if self.preset is not None:
            return ModelConfig(preset=self.preset)
        if self.arch is not None:
            return ModelConfig.model_validate(self.arch)
        return None


class FleetConstraints(StrictModel):
    """Rules of the split: deadline, per-model node bounds and the node step."""

    deadline_days: float | None = Field(default=None, gt=0, description="every model done within this")
    min_nodes_per_model: int = Field(default=1, gt=0)
    max_nodes_per_model: int | None = Field(default=None, gt=0)
    node_granularity: int = Field(default=1, gt=0, description="node counts are multiples of this")


class Fleet(StrictModel):
    """A fleet file: cluster + models + constraints (+ the hand split to compare with)."""

    cluster: FleetCluster
    instance_types: dict[str, InstanceType] = Field(
        default_factory=dict, description="instance types the shipped catalog lacks (or your own figures): its fields"
    )
    models: list[FleetModel] = Field(min_length=1)
    constraints: FleetConstraints = Field(default_factory=FleetConstraints)
    capacity: Capacity = Field(default_factory=Capacity, description="how the nodes are bought (default on-demand)")
    failures: Failures = Field(default_factory=Failures, description="failure rate and recovery costs")
    seed_split: list[int] | None = Field(default=None, description="a hand split to compare with, per model")

    @model_validator(mode="after")
    def _check(self) -> Fleet:
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate model names: {', '.join(dup)}")
        if self.seed_split is not None:
            if len(self.seed_split) != len(self.models):
                raise ValueError(f"seed_split has {len(self.seed_split)} entries for {len(self.models)} models")
            if any(n <= 0 for n in self.seed_split):
                raise ValueError("seed_split entries must be > 0")
        return self


def load_fleet(path: str | Path, overrides: list[str] | None = None) -> Fleet:
    """Load a fleet YAML; relative bench_result / checkpoint_result / run_config paths resolve against the
    file's dir."""
    path = Path(path)
    data = _read_yaml(path)
    try:
        fleet = validate_model(Fleet, apply_overrides(copy.deepcopy(data), overrides or [], str(path)), str(path))
    except ConfigError:
        takes = "plan takes a fleet file (cluster: and models:, e.g. configs/fleets/seven-models.yaml)"
        refuse_other_kind(path, data, "a fleet file", takes)
        raise
    base = path.resolve().parent
    for m in fleet.models:
        for key in ("bench_result", "checkpoint_result", "run_config"):
            value = getattr(m, key)
            if value is not None and not Path(value).is_absolute() and not Path(value).exists():
                candidate = base / value
                if candidate.exists():
                    setattr(m, key, str(candidate))
    return fleet
