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


# EC2 Capacity Blocks for ML (AWS user guide, "Capacity Blocks"): 1-14 days in 1-day steps, then 7-day steps
# up to 182 days; a block starts and ends at 11:30 UTC; its instances start terminating 30 minutes before the end.
BLOCK_MAX_DAILY_DAYS = 14
BLOCK_WEEKLY_STEP_DAYS = 7
BLOCK_MAX_DAYS = 182
BLOCK_TERMINATION_LEAD_S = 30 * 60
SPOT_NOTICE_S = 120  # the spot interruption notice


def block_duration_days(days: float) -> int:
    """The shortest block length AWS sells that covers `days`: whole days up to 14, then multiples of 7 up to
    182; ValueError above 182 (split the work over several blocks)."""
    if days <= 0:
        raise ValueError(f"a capacity block covers a positive duration, not {days:g} days")
    whole = max(1, -int(-days // 1))
    if whole <= BLOCK_MAX_DAILY_DAYS:
        return whole
    weeks = -(-whole // BLOCK_WEEKLY_STEP_DAYS) * BLOCK_WEEKLY_STEP_DAYS
    if weeks > BLOCK_MAX_DAYS:
        raise ValueError(f"{days:g} days is longer than the longest capacity block ({BLOCK_MAX_DAYS} days)")
    return weeks
