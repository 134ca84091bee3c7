"""The instance catalog: accelerator shapes, peak FLOP/s and EFA from catalog.yaml, on-demand prices from the
dated price table (prices.yaml, mltrain.cluster.prices), so every figure lives in one place.

Data files (with their sources) rather than code, so a price or a new instance type is a one-line change
that reviewers can check against the AWS pages. Users describe a type it lacks (or
their own price or figures) under `instance_types:` in their fleet file or cluster spec, with the same
fields, validated as strictly; those entries come first.
"""

from __future__ import annotations

import difflib
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from mltrain.cluster.prices import PRICES_PATH, load_prices
from mltrain.config import StrictModel, format_validation_error
from mltrain.errors import ClusterError

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")


class InstanceType(StrictModel):
    """One EC2 instance type as the planner sees it."""

    name: str = ""
    accelerators: int = Field(gt=0, description="GPUs (or Trainium chips) per instance")
    accelerator: str
    gpu_memory_gib: float = Field(gt=0, description="per accelerator, as the driver reports it")
    vcpus: int = Field(gt=0)
    memory_gib: float = Field(gt=0)
    network_gbps: float = Field(gt=0)
    efa_interfaces: int = Field(ge=0, description="max EFA network cards; 0 = no EFA")
    gpudirect_rdma: bool = Field(default=False, description="EFA with GPUDirect RDMA (P4/P5)")
    peak_bf16_tflops: float = Field(gt=0, description="dense bf16 per accelerator")
    prices: dict[str, float] = Field(default_factory=dict, description="on-demand USD/hour by region")
    price_estimate: bool = False
    notes: str | None = None

    @property
    def efa(self) -> bool:
        return self.efa_interfaces > 0

    @property
    def peak_flops(self) -> float:
        """Per accelerator, FLOP/s."""
        return self.peak_bf16_tflops * 1e12

    def price(self, region: str | None) -> float | None:
        """On-demand USD per instance-hour in `region`; None when the catalog does not know it."""
        if region is None:
            return None
        return self.prices.get(region)


PRICE_KEYS = ("prices", "price_estimate")


@cache
def load_catalog(path: Path = CATALOG_PATH, prices_path: Path = PRICES_PATH) -> dict[str, InstanceType]:
    """Parse catalog.yaml once, with each type's on-demand prices in effect today from the price table; a
    broken catalog is a ClusterError naming the entry, and so is a price written into the catalog itself."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterError(f"{path}: cannot read the instance catalog: {e}") from None
    table = load_prices(prices_path)
    today = datetime.now(UTC).date()
    out: dict[str, InstanceType] = {}
    for name, entry in (data or {}).get("instances", {}).items():
        for key in PRICE_KEYS:
            if isinstance(entry, dict) and key in entry:
                raise ClusterError(
                    f"{path}: instances.{name}.{key}: prices live in {prices_path.name} (dated, with their source)"
                )
        figures = table.on_demand(name, today)
        priced = {
            "prices": {region: f.usd_per_hour for region, f in figures.items()},
            "price_estimate": any(f.estimate for f in figures.values()),
        }
        try:
            out[name] = InstanceType.model_validate({**(entry or {}), **priced, "name": name})
        except ValidationError as e:
            raise ClusterError(format_validation_error(f"{path}: instances.{name}", e)) from None
    return out


def instance_names() -> list[str]:
    return sorted(load_catalog())


def suggest(name: str, choices: list[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' or '' — near names by difflib ratio, best first."""
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    if not close:
        close = [c for c in choices if c.split(".")[0] == name.split(".")[0]][:n]
    return f" (did you mean: {', '.join(close)}?)" if close else ""


OVERRIDE_HINT = (
    "describe it under `instance_types:` in your fleet file or cluster spec, with the catalog's fields "
    "(accelerators, accelerator, gpu_memory_gib, vcpus, memory_gib, network_gbps, efa_interfaces, "
    "peak_bf16_tflops, prices; see docs/planning.md)"
)


def get_instance(name: str, extra: dict[str, InstanceType] | None = None) -> InstanceType:
    """Look up an instance type: the user's own `instance_types:` entries first (a type the shipped catalog
    lacks, or their own figures for one it has), then the catalog. An unknown name raises ClusterError with
    near-name suggestions and the user-side way to add it (never an edit of the installed package)."""
    mine = {k.strip().lower(): v for k, v in (extra or {}).items()}
    key = name.strip().lower()
    if key in mine:
        entry = mine[key]
        return entry if entry.name else entry.model_copy(update={"name": key})
    catalog = load_catalog()
    if name in catalog:
        return catalog[name]
    if key in catalog:
        return catalog[key]
    hint = suggest(key, list(catalog) + list(mine)) or f"; known: {', '.join(instance_names())}"
    raise ClusterError(f"unknown instance type {name!r}{hint}; if it is right, {OVERRIDE_HINT}")
