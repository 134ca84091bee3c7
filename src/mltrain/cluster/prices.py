"""The dated price table (prices.yaml): USD per instance-hour by instance type, region and capacity kind.

Prices change (the p5e capacity-block rate rose in January 2026), so every figure carries its source, the date
it was read and, when it replaced an older one, the day it took effect; a plan picks the figure in effect on its
capacity's start date. Validated strictly: a figure without a known source, or two figures taking effect on the
same day, is an error naming the entry. The instance catalog's on-demand prices are read from here.
"""

from __future__ import annotations

from datetime import date as Date
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from mltrain.config import StrictModel, format_validation_error
from mltrain.errors import ClusterError

PRICES_PATH = Path(__file__).with_name("prices.yaml")

PriceKind = Literal["on-demand", "capacity-block", "spot"]


class PriceFigure(StrictModel):
    """One figure: what an instance-hour costs, from when, and who says so."""

    usd_per_hour: float = Field(ge=0)
    source: str = Field(min_length=1, description="a key of the table's `sources:`")
    date: Date = Field(description="when the figure was read or recorded")
    effective_from: Date | None = Field(default=None, description="first day it applies (none: since always)")
    estimate: bool = False


class SpotRate(StrictModel):
    """The spot reclaim rate assumed when a fleet gives none."""

    value: float = Field(ge=0, description="interruptions per instance-hour")
    source: str = Field(min_length=1)
    date: Date


class PriceTable(StrictModel):
    """prices.yaml: named sources, the default spot rate, and instance -> region -> kind -> dated figures."""

    sources: dict[str, str]
    spot_interruptions_per_node_hour: SpotRate
    instances: dict[str, dict[str, dict[PriceKind, list[PriceFigure]]]]

    @model_validator(mode="after")
    def _check(self) -> PriceTable:
        if self.spot_interruptions_per_node_hour.source not in self.sources:
            raise ValueError(f"spot_interruptions_per_node_hour.source: unknown source {self._unknown_hint()}")
        for inst, regions in self.instances.items():
            for region, kinds in regions.items():
                for kind, figures in kinds.items():
                    where = f"instances.{inst}.{region}.{kind}"
                    if not figures:
                        raise ValueError(f"{where}: no figures (remove the entry or add one)")
                    for i, f in enumerate(figures):
                        if f.source not in self.sources:
                            raise ValueError(f"{where}.{i}.source: unknown source {f.source!r}{self._unknown_hint()}")
                    starts = [f.effective_from for f in figures]
                    dup = sorted({str(s) for s in starts if starts.count(s) > 1})
                    if dup:
                        which = "without effective_from" if dup == ["None"] else f"effective_from {', '.join(dup)}"
                        raise ValueError(f"{where}: two figures {which} (which one applies?)")
        return self

    def _unknown_hint(self) -> str:
        return f" (add it under sources:; known: {', '.join(sorted(self.sources))})"

    def figure(self, instance: str, region: str | None, kind: str, when: Date | datetime) -> PriceFigure | None:
        """The figure in effect on `when` (an ODCR is billed at the on-demand price); None when the table has
        none for that instance, region and kind, or none in effect yet."""
        if region is None:
            return None
        figures = self.instances.get(instance, {}).get(region, {}).get(_kind(kind), [])
        day = when.date() if isinstance(when, datetime) else when
        in_effect = [f for f in figures if f.effective_from is None or f.effective_from <= day]
        return max(in_effect, key=lambda f: f.effective_from or Date.min, default=None)

    def on_demand(self, instance: str, when: Date) -> dict[str, PriceFigure]:
        """On-demand figures in effect on `when`, by region (the catalog's `prices`)."""
        out = {}
        for region in self.instances.get(instance, {}):
            f = self.figure(instance, region, "on-demand", when)
            if f is not None:
                out[region] = f
        return out


def _kind(kind: str) -> str:
    return "on-demand" if kind == "odcr" else kind


@cache
def load_prices(path: Path = PRICES_PATH) -> PriceTable:
    """Parse prices.yaml once; a broken table is a ClusterError naming the entry."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterError(f"{path}: cannot read the price table: {e}") from None
    try:
        return PriceTable.model_validate(data or {})
    except ValidationError as e:
        raise ClusterError(format_validation_error(str(path), e)) from None
