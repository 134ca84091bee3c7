"""How the fleet's nodes are bought: on-demand, an On-Demand Capacity Reservation, an EC2 Capacity Block,
or spot. The kind decides the price, whether the cluster has a hard end, and what interrupts it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

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

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        """A time without a zone is UTC (AWS states block times in UTC); any other zone is converted."""
        if v is None:
            return None
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)

    @model_validator(mode="after")
    def _check(self) -> Capacity:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"end {_iso(self.end)} is not after start {_iso(self.start)}")
        if self.interruptions_per_node_hour is not None and self.type != "spot":
            raise ValueError(f"interruptions_per_node_hour is for spot capacity, not {self.type}")
        if self.reservation_id is not None and self.type not in ("odcr", "capacity-block"):
            raise ValueError(f"reservation_id is for odcr or capacity-block capacity, not {self.type}")
        return self


# EC2 Capacity Blocks for ML (AWS user guide, "Capacity Blocks"): 1-14 days in 1-day steps, then 7-day steps
# up to 182 days; a block starts and ends at 11:30 UTC; its instances start terminating 30 minutes before the end.
BLOCK_MAX_DAILY_DAYS = 14
BLOCK_WEEKLY_STEP_DAYS = 7
BLOCK_MAX_DAYS = 182
BLOCK_TERMINATION_LEAD_S = 30 * 60
SPOT_NOTICE_S = 120  # the spot interruption notice
# Capacity Blocks user guide ("Find and purchase Capacity Blocks"): each block holds up to 64 instances, and an
# account holds up to 256 instances across its blocks.
BLOCK_MAX_INSTANCES = 64
BLOCKS_MAX_INSTANCES = 256
BLOCK_END_UTC = time(11, 30)
# A block's instances are launched when it starts: they boot, join Slurm and the job starts. An hour is allowed
# for that, on top of the 30-minute termination lead at the end, when sizing a block for a training's days.
BLOCK_STARTUP_S = 60 * 60


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


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def next_block_start(now: datetime) -> datetime:
    """The first 11:30 UTC strictly after `now` (the earliest start a block bought now can have)."""
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    at = datetime.combine(now.date(), BLOCK_END_UTC, tzinfo=UTC)
    return at if at > now else at + timedelta(days=1)


def _last_1130(t: datetime) -> datetime:
    """The last 11:30 UTC at or before `t` (block lengths count whole days from it)."""
    at = datetime.combine(t.date(), BLOCK_END_UTC, tzinfo=UTC)
    return at if at <= t else at - timedelta(days=1)


def split_block_instances(instances: int) -> list[tuple[int, int]]:
    """`instances` split into as few blocks of at most 64 as possible, balanced (sizes differ by at most one):
    [(count, instances per block), ...], largest first. 80 -> [(2, 40)]; 130 -> [(1, 44), (2, 43)]."""
    if instances <= 0:
        raise ValueError(f"a capacity block holds a positive number of instances, not {instances}")
    blocks = -(-instances // BLOCK_MAX_INSTANCES)
    small, extra = divmod(instances, blocks)
    out = [(extra, small + 1), (blocks - extra, small)]
    return [(count, size) for count, size in out if count > 0]


@dataclass(frozen=True)
class BlockPurchase:
    """`count` capacity blocks of `instances` each, from `start` to `end` (11:30 UTC), `days` long."""

    covers: str  # "fleet" or a model's name
    count: int
    instances: int
    start: datetime
    end: datetime
    days: int
    usd: float | None  # count x instances x days x 24 x the price; None when the price is unknown

    @property
    def usable_end(self) -> datetime:
        return self.end - timedelta(seconds=BLOCK_TERMINATION_LEAD_S)

    def to_dict(self) -> dict:
        return {
            "covers": self.covers,
            "count": self.count,
            "instances": self.instances,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "usable_end": _iso(self.usable_end),
            "days": self.days,
            "usd": self.usd,
        }


def plan_blocks(
    covers: str, instances: int, days: float, start: datetime, price_per_node_hour: float | None
) -> list[BlockPurchase]:
    """The blocks to buy so that `instances` nodes are held for `days` of training from `start`: the length
    covers the days plus BLOCK_STARTUP_S and the termination lead (and the part of the first day before 11:30
    UTC when `start` is not at 11:30), rounded up to a length AWS sells; the end is at 11:30 UTC.
    ValueError when the training is longer than the longest block."""
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    anchor = _last_1130(start)
    offset_days = (start - anchor).total_seconds() / 86400
    need = days + (BLOCK_STARTUP_S + BLOCK_TERMINATION_LEAD_S) / 86400 + offset_days
    length = block_duration_days(need)
    end = anchor + timedelta(days=length)
    hours = (end - start).total_seconds() / 3600
    return [
        BlockPurchase(
            covers=covers,
            count=count,
            instances=size,
            start=start,
            end=end,
            days=length,
            usd=None if price_per_node_hour is None else count * size * hours * price_per_node_hour,
        )
        for count, size in split_block_instances(instances)
    ]


def check_block_total(blocks: list[BlockPurchase]) -> None:
    """ValueError when the blocks hold more instances together than an account may (256)."""
    total = sum(b.count * b.instances for b in blocks)
    if total > BLOCKS_MAX_INSTANCES:
        raise ValueError(
            f"the plan needs {total} instances in capacity blocks; an account holds at most "
            f"{BLOCKS_MAX_INSTANCES} across its blocks (use fewer nodes, or another capacity type for some models)"
        )


def usable_end(capacity: Capacity, planned_end: datetime | None = None) -> datetime | None:
    """The last moment the capacity runs training: a capacity block's hard end (`end`, else the end of the
    block the plan buys, `planned_end`) minus the 30 minutes in which AWS terminates its instances; for the
    other kinds the `end` given (a reservation you hold); None when there is no end."""
    end = capacity.end
    if capacity.type == "capacity-block":
        end = end or planned_end
        return None if end is None else end - timedelta(seconds=BLOCK_TERMINATION_LEAD_S)
    return end
