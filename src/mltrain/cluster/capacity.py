"""How the fleet's nodes are bought: on-demand, an On-Demand Capacity Reservation, an EC2 Capacity Block,
or spot. The kind decides the price, whether the cluster has a hard end, and what interrupts it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from mltrain.config import StrictModel

CapacityKind = Literal["on-demand", "odcr", "capacity-block", "spot"]


class Capacity(StrictModel):
    """`capacity:` of a fleet (all models) or of one model (its own nodes)."""

    type: CapacityKind = "on-demand"
    start: datetime | None = Field(
        default=None, description="capacity-block: when the block starts (UTC); default: the next 11:30 UTC"
    )
    end: datetime | None = Field(
        default=None, description="the end of a block or reservation you already hold (UTC): a hard deadline"
    )
    reservation_id: str | None = Field(default=None, description="ODCR or capacity-block id (cr-...)")
    price_per_node_hour: float | None = Field(default=None, ge=0, description="override the price table")
    interruptions_per_node_hour: float | None = Field(
        default=None, ge=0, description="spot: reclaim rate assumed per instance-hour (default from the table)"
    )
