"""The fleet's own record: which run dir and Slurm job serve which model, on how many nodes, since when,
and what the plan promised. `fleet submit` writes it, `fleet rebalance` updates it, `fleet status` reads it.

It lives beside the runs (`<run_base_dir>/fleets/<fleet file stem>.json`) so every login node that sees
the runs sees it, and it is rewritten atomically: a failed write leaves the previous record.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mltrain.errors import ClusterError
from mltrain.fsutil import atomic_write

FLEETS_DIR = "fleets"


@dataclass
class ModelRecord:
    """One model's run in the fleet."""

    run_dir: str
    nodes: int
    planned_days: float  # the plan's days at `nodes`, when submitted
    submitted_at: float  # first submit (the plan's clock starts here)
    planned_finish: float  # submitted_at + planned_days (moved by a rebalance to its new estimate)
    job_ids: list[str] = field(default_factory=list)


@dataclass
class FleetState:
    """What `fleet submit` did, plus the moves `fleet rebalance --apply` made since."""

    fleet: str  # the fleet file, absolute
    cluster: str  # the cluster spec, absolute
    submitted_at: float
    price_per_node_hour: float | None
    cluster_nodes: int
    models: dict[str, ModelRecord] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # rebalance moves: time, from, to, nodes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fleet_state_path(run_base_dir: str, fleet_yaml: str | os.PathLike[str]) -> Path:
    """`<run_base_dir>/fleets/<fleet file stem>.json` (a relative base is taken from the current dir)."""
    return Path(os.path.abspath(run_base_dir)) / FLEETS_DIR / f"{Path(fleet_yaml).stem}.json"


def read_fleet_state(path: Path) -> FleetState | None:
    """The record, None when the fleet was never submitted; a damaged one is a ClusterError naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ClusterError(f"{path}: cannot read the fleet record: {e}") from None
    try:
        models = {k: ModelRecord(**v) for k, v in data.pop("models", {}).items()}
        return FleetState(**data, models=models)
    except TypeError as e:
        raise ClusterError(f"{path}: not a fleet record this mltrain writes ({e})") from None


def write_fleet_state(path: Path, state: FleetState) -> None:
    """Atomic rewrite; an OSError is a ClusterError naming the file."""
    try:
        atomic_write(path, json.dumps(state.to_dict(), indent=2) + "\n")
    except OSError as e:
        raise ClusterError(f"{path}: cannot write the fleet record: {e.strerror or e}") from None
