"""Capacity planning: memory fit, FLOPs, days, node-hours and dollars per model, and the node split.

Pure functions (no torch, no I/O except reading a bench result), so the numbers are reproducible
and testable. Every assumption is a named constant in `Assumptions` and printed with the plan.

Memory per GPU, FSDP full sharding over all GPUs of one model's job (mixed precision):
  sharded state   = params x 16 B / GPUs   (fp32 master weights 4 + fp32 grads 4 + AdamW m, v 2 x 4)
  working set     = 2 FSDP units x unit params x 6 B   (bf16 all-gathered weights 2 + fp32 unsharded
                    grads 4 before the reduce-scatter; the current unit + the prefetched one; the
                    largest unit is a transformer block or the embedding / head matrix)
  activations     = layers x 34 B x micro_batch x seq x hidden   (Korthikanti et al. 2022, 16-bit,
                    flash attention so no seq^2 term; with activation checkpointing: 2 B per layer
                    for the kept layer inputs + one layer recomputed at 34 B)
                  + logits: micro_batch x seq x vocab x 6 B (bf16 logits + fp32 copy for the loss)
  overhead        = 6 GiB (CUDA context, NCCL buffers, allocator fragmentation)
Training FLOPs = tokens x (6 N + 12 L H Q T) — N: matmul parameters (all but the embedding lookup,
plus the output head), H*Q = hidden size, T = seq_len (same convention as mltrain.train.metrics).
Time = FLOPs / (nodes x GPUs per node x peak bf16 FLOP/s x MFU): MFU is assumed not to change with
the node count (weak scaling of data parallelism; state your MFU for the node counts you plan).
"""

from __future__ import annotations

import heapq
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mltrain.cluster.capacity import (
    SPOT_NOTICE_S,
    BlockPurchase,
    Capacity,
    check_block_total,
    next_block_start,
    plan_blocks,
    usable_end,
)
from mltrain.cluster.catalog import InstanceType, get_instance
from mltrain.cluster.fleet import Fleet, FleetModel
from mltrain.cluster.layout import (
    Bandwidth,
    Layout,
    LayoutAssumptions,
    LayoutModel,
    MemoryAssumptions,
    choose_layout,
    layout_model_from_config,
)
from mltrain.cluster.prices import load_prices
from mltrain.config import ModelConfig
from mltrain.errors import ClusterError

GIB = 1024**3
HOURS_PER_DAY = 24.0


@dataclass(frozen=True)
class Assumptions(MemoryAssumptions):
    """The memory model's constants (see the module docstring)."""


DEFAULT_ASSUMPTIONS = Assumptions()


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model's size."""

    params: float  # all parameters (memory)
    matmul_params: float  # N of 6N (FLOPs)
    n_layers: int
    hidden_size: int
    vocab_size: int
    largest_unit_params: float  # biggest FSDP unit: one block or the embedding matrix


def shape_from_config(cfg: ModelConfig) -> ModelShape:
    """Analytic counts from an architecture (the trainer's own formulas, mltrain.train.metrics)."""
    from mltrain.model.flops import matmul_params, param_count

    d = cfg.hidden_size
    emb = cfg.vocab_size * d
    body = param_count(cfg, include_embedding=False) - (0 if cfg.tie_embeddings else emb)  # layers + final norm
    per_layer = (body - d) // cfg.n_layers
    return ModelShape(
        params=float(param_count(cfg)),
        matmul_params=float(matmul_params(cfg)),
        n_layers=cfg.n_layers,
        hidden_size=d,
        vocab_size=cfg.vocab_size,
        largest_unit_params=float(max(per_layer, emb)),
    )


def model_shape(m: FleetModel) -> ModelShape:
    """Shape of a fleet model: from its preset/arch, or from explicit params (every parameter then
    counts as a matmul parameter, and the largest FSDP unit is one layer or the embedding)."""
    cfg = m.architecture()
    if cfg is not None:
        return shape_from_config(cfg)
    assert m.params is not None and m.n_layers is not None and m.hidden_size is not None
    vocab = m.vocab_size or 0
    return ModelShape(
        params=m.params,
        matmul_params=m.params,
        n_layers=m.n_layers,
        hidden_size=m.hidden_size,
        vocab_size=vocab,
        largest_unit_params=max(m.params / m.n_layers, float(vocab * m.hidden_size)),
    )


def layout_model(m: FleetModel) -> LayoutModel:
    """The layout search's view of a fleet model (explicit `params`: no heads to check, every parameter
    in the layers)."""
    cfg = m.architecture()
    if cfg is not None:
        return layout_model_from_config(cfg)
    shape = model_shape(m)
    return LayoutModel(
        params=shape.params,
        n_layers=shape.n_layers,
        hidden_size=shape.hidden_size,
        vocab_size=shape.vocab_size,
        layer_params=shape.params / shape.n_layers,
        largest_unit_params=shape.largest_unit_params,
    )


def plan_layout(
    m: FleetModel, inst: InstanceType, nodes: int, mfu: float | None, a: Assumptions = DEFAULT_ASSUMPTIONS
) -> Layout | None:
    """The parallel layout of model `m` on `nodes` nodes (None when none fits); with an MFU the choice
    among fitting layouts weighs their estimated step times (network: the instance's, split over its GPUs)."""
    bw = (
        None
        if mfu is None
        else Bandwidth(peak_flops=inst.peak_flops, mfu=mfu, efa_gbytes_per_s=inst.network_gbps / 8 / inst.accelerators)
    )
    return choose_layout(
        layout_model(m),
        nodes=nodes,
        gpus_per_node=inst.accelerators,
        gpu_memory_gib=inst.gpu_memory_gib,
        seq_len=m.seq_len,
        micro_batch_size=m.micro_batch_size,
        activation_checkpointing=m.activation_checkpointing,
        bandwidth=bw,
        a=LayoutAssumptions(**asdict(a)),
    )


def min_nodes_by_layout(
    m: FleetModel, inst: InstanceType, max_nodes: int, a: Assumptions = DEFAULT_ASSUMPTIONS
) -> int | None:
    """Smallest node count (up to max_nodes) on which some layout (TP, CP, PP, checkpointing) fits."""
    for n in range(1, max_nodes + 1):
        if plan_layout(m, inst, n, None, a) is not None:
            return n
    return None


def memory_per_gpu_gib(
    shape: ModelShape,
    total_gpus: int,
    micro_batch_size: int,
    seq_len: int,
    activation_checkpointing: bool = False,
    a: Assumptions = DEFAULT_ASSUMPTIONS,
) -> dict[str, float]:
    """GiB per GPU by part (state, working, activations, logits, overhead, total)."""
    if total_gpus <= 0:
        raise ClusterError(f"memory estimate needs a positive GPU count, got {total_gpus}")
    tokens = micro_batch_size * seq_len
    if activation_checkpointing:
        act = (
            tokens
            * shape.hidden_size
            * (shape.n_layers * a.checkpointed_bytes_per_token_hidden + a.activation_bytes_per_token_hidden)
        )
    else:
        act = tokens * shape.hidden_size * shape.n_layers * a.activation_bytes_per_token_hidden
    parts = {
        "state": shape.params * a.state_bytes_per_param / total_gpus / GIB,
        "working": a.units_in_flight * shape.largest_unit_params * a.working_bytes_per_param / GIB,
        "activations": act / GIB,
        "logits": tokens * shape.vocab_size * a.logits_bytes_per_token_vocab / GIB,
        "overhead": a.overhead_gib,
    }
    parts["total"] = sum(parts.values())
    return parts


def min_nodes_to_fit(
    shape: ModelShape,
    inst: InstanceType,
    micro_batch_size: int,
    seq_len: int,
    activation_checkpointing: bool = False,
    a: Assumptions = DEFAULT_ASSUMPTIONS,
) -> int | None:
    """Smallest node count whose per-GPU memory fits the GPU; None if no count does (the part that
    does not shrink with sharding — working set, activations, logits, overhead — is too big)."""
    fixed = memory_per_gpu_gib(shape, 1, micro_batch_size, seq_len, activation_checkpointing, a)
    room = inst.gpu_memory_gib - (fixed["total"] - fixed["state"])
    if room <= 0:
        return None
    state_total_gib = fixed["state"]  # at 1 GPU == the whole state
    gpus = max(1, math.ceil(state_total_gib / room - 1e-9))
    nodes = max(1, math.ceil(gpus / inst.accelerators))
    # guard float edges: step until it really fits
    while (
        memory_per_gpu_gib(shape, nodes * inst.accelerators, micro_batch_size, seq_len, activation_checkpointing, a)[
            "total"
        ]
        > inst.gpu_memory_gib
    ):
        nodes += 1
    return nodes


def flops_per_token(shape: ModelShape, seq_len: int) -> float:
    """6 N + 12 L H Q T (H*Q = hidden size)."""
    return 6.0 * shape.matmul_params + 12.0 * shape.n_layers * shape.hidden_size * seq_len


def read_bench_mfu(path: str | Path) -> float:
    """MFU from a bench result: a JSON with `mfu` (top level, or under `result`/`summary`), or a
    run's metrics.jsonl (median of the `train` lines' mfu, the first 10% dropped as warm-up)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ClusterError(f"{path}: cannot read bench result: {e.strerror or e}") from None
    if path.suffix == ".jsonl":
        from mltrain.fsutil import read_jsonl

        vals = [
            float(r["mfu"])
            for r in read_jsonl(path)
            if r.get("kind") == "train" and isinstance(r.get("mfu"), int | float)
        ]
        vals = vals[len(vals) // 10 :]
        if not vals:
            raise ClusterError(f"{path}: no train lines with an mfu value")
        value = statistics.median(vals)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ClusterError(f"{path}: not JSON: {e}") from None
        value = None
        for node in (
            data,
            data.get("result") if isinstance(data, dict) else None,
            data.get("summary") if isinstance(data, dict) else None,
        ):
            if isinstance(node, dict) and isinstance(node.get("mfu"), int | float):
                value = float(node["mfu"])
                break
        if value is None:
            raise ClusterError(f"{path}: key 'mfu' not found (top level, result or summary)")
    if not 0 < value <= 1:
        raise ClusterError(f"{path}: mfu {value} is not in (0, 1]")
    return value


# --------------------------------------------------------------------------- allocation


def _round_up(n: int, g: int) -> int:
    return -(-n // g) * g


def allocate_min_makespan(
    work: list[float], lo: list[int], hi: list[int], total: int, granularity: int = 1
) -> list[int]:
    """Whole nodes per job minimising max(work_i / n_i), with lo_i <= n_i <= hi_i, n_i multiples of
    `granularity`, sum <= total. Greedy: always grow the job that finishes last; exact for this
    problem because only growing the longest job can lower the maximum (each time is decreasing
    in n). Raises ClusterError when the lower bounds alone exceed `total`."""
    if total <= 0 or granularity <= 0:
        raise ClusterError(f"allocation needs positive nodes and granularity, got {total} and {granularity}")
    if any(w <= 0 for w in work):
        raise ClusterError("allocation needs positive work for every model")
    n = list(lo)
    if sum(n) > total:
        raise ClusterError(f"the models need {sum(n)} nodes together, the cluster has {total}")
    free = total - sum(n)
    heap = [(-w / k, i) for i, (w, k) in enumerate(zip(work, n, strict=True))]
    heapq.heapify(heap)
    while heap and free >= granularity:
        _, i = heapq.heappop(heap)
        if n[i] + granularity > hi[i]:
            break  # the longest job cannot grow: the makespan is final
        n[i] += granularity
        free -= granularity
        heapq.heappush(heap, (-work[i] / n[i], i))
    return n


# --------------------------------------------------------------------------- the plan


@dataclass
class ModelPlan:
    name: str
    params: float
    tokens: float
    seq_len: int
    mfu: float
    flops: float
    node_days_work: float  # days on one node at this MFU
    min_nodes_fit: int
    mem_gib_per_gpu: float  # at the planned node count
    nodes: int
    days: float
    node_hours: float
    dollars: float | None
    seed_nodes: int | None = None
    seed_days: float | None = None
    seed_node_hours: float | None = None
    seed_dollars: float | None = None
    seed_note: str | None = None
    layout: dict[str, Any] | None = None  # the parallel layout at `nodes` (mltrain.cluster.layout.Layout)
    layout_reason: str | None = None
    capacity: str = "on-demand"  # how its nodes are bought (its own `capacity:` or the fleet's)
    price_per_node_hour: float | None = None  # what its node-hours cost (`dollars` = node_hours x this)
    price_source: str = ""


@dataclass
class SplitTotals:
    nodes_used: int
    makespan_days: float
    busy_node_hours: float
    cluster_node_hours: float  # the whole cluster held for the makespan
    idle_node_hours: float
    busy_dollars: float | None
    cluster_dollars: float | None


@dataclass
class Plan:
    instance_type: str
    region: str | None
    nodes: int
    gpus_per_node: int
    gpu: str
    peak_tflops: float
    price_per_node_hour: float | None
    price_source: str
    objective: str
    models: list[ModelPlan]
    totals: SplitTotals
    seed_totals: SplitTotals | None = None
    assumptions: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    capacity: dict[str, Any] = field(default_factory=dict)  # kinds, prices, blocks to buy, warnings (plan_capacity)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _totals(
    nodes: list[int],
    days: list[float],
    cluster_nodes: int,
    price: float | None,
    model_prices: list[float | None] | None = None,
) -> SplitTotals:
    """Makespan, node-hours and dollars of a split. `model_prices`: what each model's nodes cost when some
    models buy their own capacity; the cluster's nodes no model uses cost `price`."""
    makespan_h = max(days) * HOURS_PER_DAY
    busy = sum(n * d * HOURS_PER_DAY for n, d in zip(nodes, days, strict=True))
    cluster_h = cluster_nodes * makespan_h
    busy_usd = None if price is None else busy * price
    cluster_usd = None if price is None else cluster_h * price
    if model_prices is not None and any(p != price for p in model_prices):
        spare = max(0, cluster_nodes - sum(nodes))  # nodes no model uses: held at the fleet's price
        known = [p for p in model_prices if p is not None]
        busy_usd = cluster_usd = None
        if len(known) == len(nodes):
            busy_usd = sum(n * d * HOURS_PER_DAY * p for n, d, p in zip(nodes, days, known, strict=True))
            if spare == 0 or price is not None:
                cluster_usd = makespan_h * (
                    sum(n * p for n, p in zip(nodes, known, strict=True)) + spare * (price or 0)
                )
    return SplitTotals(
        nodes_used=sum(nodes),
        makespan_days=max(days),
        busy_node_hours=busy,
        cluster_node_hours=cluster_h,
        idle_node_hours=cluster_h - busy,
        busy_dollars=busy_usd,
        cluster_dollars=cluster_usd,
    )


# --------------------------------------------------------------------------- capacity and prices


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def capacity_start(cap: Capacity, now: datetime) -> datetime:
    """When the capacity starts: its `start`, else the next 11:30 UTC for a block to buy, else now (a block
    you hold, `end` or `reservation_id` given, is taken as usable now)."""
    if cap.start is not None:
        return cap.start
    held = cap.end is not None or cap.reservation_id is not None
    return next_block_start(now) if cap.type == "capacity-block" and not held else now


def capacity_price(
    fleet: Fleet, inst: InstanceType, cap: Capacity, where: str, own: bool, when: datetime
) -> tuple[float | None, str]:
    """USD per node-hour and where it came from. Order: the capacity's own `price_per_node_hour`; for the
    fleet's capacity, `cluster.price_per_node_hour`; for on-demand and ODCR, the user's `instance_types`
    figures; then the price table's figure for the kind in effect on `when`."""
    c = fleet.cluster
    if cap.price_per_node_hour is not None:
        return cap.price_per_node_hour, f"fleet file, {where}.price_per_node_hour"
    if not own and c.price_per_node_hour is not None:
        return c.price_per_node_hour, "fleet file"
    on_demand = cap.type in ("on-demand", "odcr")
    mine = {k.strip().lower() for k in fleet.instance_types}
    if on_demand and c.instance_type.strip().lower() in mine and inst.price(c.region) is not None:
        return inst.price(c.region), f"catalog, {c.region}" + (" (estimate)" if inst.price_estimate else "")
    fig = load_prices().figure(inst.name, c.region, cap.type, when)
    if fig is not None:
        est = " (estimate)" if fig.estimate else ""
        if on_demand:
            return fig.usd_per_hour, f"catalog, {c.region}{est}"
        since = f" from {fig.effective_from}" if fig.effective_from else ""
        return fig.usd_per_hour, f"price table, {cap.type} {c.region}{since}, {fig.source} read {fig.date}{est}"
    if on_demand and not own:
        return None, f"unknown for {c.region or 'no region'}: set cluster.price_per_node_hour"
    return None, (
        f"unknown {cap.type} price for {inst.name} in {c.region or 'no region'}: set {where}.price_per_node_hour"
    )


def _blocks(
    covers: str,
    instances: int,
    days: float,
    start: datetime,
    price: float | None,
    now: datetime,
    warnings: list[str],
) -> list[BlockPurchase]:
    """The blocks for one set of nodes; a start in the past (a block is bought for later) moves to the next
    11:30 UTC, with a warning, so that a plan read after its start (e.g. by `fleet submit`) still works."""
    if start < now:
        key = "capacity" if covers == "fleet" else f"model {covers}: capacity"
        start = next_block_start(now)
        warnings.append(
            f"{key}.start is in the past: the block to buy is planned from {_iso(start)} (for a block you hold, "
            "give its end or reservation_id)"
        )
    try:
        return plan_blocks(covers, instances, days, start, price)
    except ValueError as e:
        who = "the fleet" if covers == "fleet" else f"model {covers}"
        raise ClusterError(f"{who}: capacity block: {e}") from None


def plan_capacity(
    fleet: Fleet,
    plans: list[ModelPlan],
    caps: list[tuple[Capacity, bool, datetime]],
    fleet_price: tuple[float | None, str],
    now: datetime,
    goodputs: list[float] | None = None,
) -> dict[str, Any]:
    """The plan's `capacity`: per model its kind, price and window; the capacity blocks to buy (one set for the
    models on the fleet's capacity, for their makespan; one per model with its own block, for its days); the
    spot assumptions; a warning per model whose held capacity ends before it finishes.

    A block is paid up front and ends on time whatever happened, so it is sized for the days a model is
    expected to take with its checkpoint saves and failures (its days / expected goodput, `goodputs` in the
    models' order, from mltrain.cluster.reliability), not for the failure-free days."""
    need = [p.days / g if g > 0 else p.days for p, g in zip(plans, goodputs or [1.0] * len(plans), strict=True)]
    fc = fleet.capacity
    fstart = capacity_start(fc, now)
    models, blocks, warnings = [], [], []
    spot_rate = load_prices().spot_interruptions_per_node_hour
    for i, (p, (cap, own, start)) in enumerate(zip(plans, caps, strict=True)):
        finish = max(start, now) + timedelta(days=p.days)  # capacity that started already: training starts now
        entry: dict[str, Any] = {
            "model": p.name,
            "type": cap.type,
            "own": own,
            "price_per_node_hour": p.price_per_node_hour,
            "price_source": p.price_source,
            "reservation_id": cap.reservation_id,
            "start": _iso(start),
            "finish": _iso(finish),
            "end": None if cap.end is None else _iso(cap.end),
            "usable_end": None,
        }
        held = cap.end is not None or cap.reservation_id is not None
        if own and cap.type == "capacity-block" and not held:
            mine = _blocks(p.name, p.nodes, need[i], start, p.price_per_node_hour, now, warnings)
            blocks += mine
            entry["usable_end"] = _iso(mine[0].usable_end)
        else:
            ue = usable_end(cap)
            entry["usable_end"] = None if ue is None else _iso(ue)
            if ue is not None and ue < finish:
                short = (finish - ue).total_seconds() / 86400
                warnings.append(
                    f"model {p.name}: its {cap.type} capacity is usable until {_iso(ue)}, {short:.2f} days before "
                    f"its planned finish {_iso(finish)}"
                )
        if cap.type == "spot":
            rate = cap.interruptions_per_node_hour
            entry["notice_s"] = SPOT_NOTICE_S
            entry["interruptions_per_node_hour"] = spot_rate.value if rate is None else rate
            entry["interruption_rate_source"] = (
                f"price table: {spot_rate.source} ({spot_rate.date})"
                if rate is None
                else f"fleet file, {f'models.{i}.' if own else ''}capacity.interruptions_per_node_hour"
            )
            entry["expected_interruptions"] = entry["interruptions_per_node_hour"] * p.node_hours
        models.append(entry)
    shared = [(p, d) for p, d, (_, own, _) in zip(plans, need, caps, strict=True) if not own]
    fleet_blocks: list[BlockPurchase] = []
    if fc.type == "capacity-block" and shared and fc.end is None and fc.reservation_id is None:
        fleet_blocks = _blocks(
            "fleet", sum(p.nodes for p, _ in shared), max(d for _, d in shared), fstart, fleet_price[0], now, warnings
        )
        for e in models:
            if not e["own"]:
                e["usable_end"] = _iso(fleet_blocks[0].usable_end)
    blocks = fleet_blocks + blocks
    try:
        check_block_total(blocks)
    except ValueError as e:
        raise ClusterError(str(e)) from None
    fue = usable_end(fc, fleet_blocks[0].end if fleet_blocks else None)
    usd = [b.usd for b in blocks]
    return {
        "type": fc.type,
        "price_per_node_hour": fleet_price[0],
        "price_source": fleet_price[1],
        "reservation_id": fc.reservation_id,
        "start": _iso(fstart),
        "end": None if fc.end is None else _iso(fc.end),
        "usable_end": None if fue is None else _iso(fue),
        "models": models,
        "blocks": [b.to_dict() for b in blocks],
        "sized_for_days": {
            e["model"]: round(d, 4) for e, d in zip(models, need, strict=True)
        },  # failure-free days / expected goodput: what a block bought for the model covers
        "blocks_instances": sum(b.count * b.instances for b in blocks),
        "blocks_usd": sum(u for u in usd if u is not None) if blocks and None not in usd else None,
        "warnings": warnings,
    }


def _goodputs(fleet: Fleet, plans: list[ModelPlan], gpus_per_node: int) -> list[float]:
    """Each model's expected goodput with its planned checkpoint interval and the fleet's failure rate."""
    from mltrain.cluster.reliability import model_reliability

    by_name = {m.name: m for m in fleet.models}
    return [model_reliability(by_name[p.name], p, fleet.failures, gpus_per_node).goodput for p in plans]


def plan_fleet(fleet: Fleet, a: Assumptions = DEFAULT_ASSUMPTIONS, now: datetime | None = None) -> Plan:
    """Per-model fit, FLOPs and cost, the min-makespan split (meeting deadlines), the seed split, and the
    capacity (kinds, prices in effect at each capacity's start, blocks to buy). `now`: the planning time
    (UTC, default the clock), the start of capacity with none given."""
    c, k = fleet.cluster, fleet.constraints
    inst = get_instance(c.instance_type, fleet.instance_types)
    gpn = inst.accelerators
    now = datetime.now(UTC) if now is None else (now.replace(tzinfo=UTC) if now.tzinfo is None else now)
    fleet_start = capacity_start(fleet.capacity, now)
    price, price_source = capacity_price(fleet, inst, fleet.capacity, "capacity", False, fleet_start)
    caps: list[tuple[Capacity, bool, datetime]] = []
    model_prices: list[tuple[float | None, str]] = []
    for i, m in enumerate(fleet.models):
        if m.capacity is None:
            caps.append((fleet.capacity, False, fleet_start))
            model_prices.append((price, price_source))
        else:
            start = capacity_start(m.capacity, now)
            caps.append((m.capacity, True, start))
            model_prices.append(capacity_price(fleet, inst, m.capacity, f"models.{i}.capacity", True, start))
    g = k.node_granularity
    if g > c.nodes:
        raise ClusterError(f"constraints.node_granularity {g} is larger than the cluster ({c.nodes} nodes)")
    notes: list[str] = []
    if inst.notes:
        notes.append(f"{inst.name}: {inst.notes}")

    shapes, works, lo, hi, mfus, fits, flops = [], [], [], [], [], [], []
    for m in fleet.models:
        shape = model_shape(m)
        mfu = m.mfu if m.mfu is not None else read_bench_mfu(m.bench_result or "")
        if m.fit == "layout":
            fit = min_nodes_by_layout(m, inst, c.nodes, a)
            if fit is None:
                raise ClusterError(
                    f"model {m.name}: no layout (tp, cp, pp, activation checkpointing) fits on {c.nodes} x "
                    f"{inst.name} ({inst.gpu_memory_gib} GiB per GPU) at micro_batch_size={m.micro_batch_size}, "
                    f"seq_len={m.seq_len}"
                )
        else:
            fit = min_nodes_to_fit(shape, inst, m.micro_batch_size, m.seq_len, m.activation_checkpointing, a)
        if fit is None:
            mem = memory_per_gpu_gib(shape, 10**9, m.micro_batch_size, m.seq_len, m.activation_checkpointing, a)
            raise ClusterError(
                f"model {m.name}: does not fit on a {inst.accelerator} ({inst.gpu_memory_gib} GiB) at any node count: "
                f"{mem['total']:.1f} GiB/GPU even fully sharded (activations {mem['activations']:.1f}, logits "
                f"{mem['logits']:.1f}, working set {mem['working']:.1f}) at micro_batch_size={m.micro_batch_size}, "
                f"seq_len={m.seq_len}; lower them or set activation_checkpointing: true"
            )
        if fit > c.nodes:
            mem = memory_per_gpu_gib(shape, c.nodes * gpn, m.micro_batch_size, m.seq_len, m.activation_checkpointing, a)
            raise ClusterError(
                f"model {m.name}: needs {fit} nodes to fit in memory ({mem['total']:.1f} GiB/GPU on all "
                f"{c.nodes} nodes, GPU has {inst.gpu_memory_gib}), the cluster has {c.nodes}"
            )
        f = flops_per_token(shape, m.seq_len) * m.tokens
        work_node_s = f / (gpn * inst.peak_flops * mfu)
        lower = _round_up(max(fit, m.min_nodes or k.min_nodes_per_model), g)
        upper_raw = min(x for x in (m.max_nodes, k.max_nodes_per_model, c.nodes) if x is not None)
        upper = (upper_raw // g) * g
        if upper < lower:
            raise ClusterError(
                f"model {m.name}: needs at least {lower} nodes (fit {fit}, granularity {g}) but may use at most "
                f"{upper_raw}"
            )
        deadline = m.deadline_days or k.deadline_days
        if deadline is not None:
            need = _round_up(math.ceil(work_node_s / (deadline * 86400) - 1e-9), g)
            if need > upper:
                raise ClusterError(
                    f"model {m.name}: needs {need} nodes to train {m.tokens:.3g} tokens in {deadline:g} days at "
                    f"MFU {mfu:.2f}, but may use at most {upper}"
                )
            lower = max(lower, need)
        shapes.append(shape), works.append(work_node_s), lo.append(lower), hi.append(upper)
        mfus.append(mfu), fits.append(fit), flops.append(f)

    if sum(lo) > c.nodes:
        detail = ", ".join(f"{m.name} {n}" for m, n in zip(fleet.models, lo, strict=True))
        why = "to meet the deadlines" if any(m.deadline_days for m in fleet.models) or k.deadline_days else "at least"
        raise ClusterError(f"the models need {sum(lo)} nodes together {why} ({detail}); the cluster has {c.nodes}")
    nodes = allocate_min_makespan(works, lo, hi, c.nodes, g)
    objective = "min makespan" + (
        " meeting deadlines" if any(m.deadline_days for m in fleet.models) or k.deadline_days else ""
    )

    plans: list[ModelPlan] = []
    days = []
    for m, shape, w, n, mfu, fit, f, (mprice, msource), (cap, _, _) in zip(
        fleet.models, shapes, works, nodes, mfus, fits, flops, model_prices, caps, strict=True
    ):
        d = w / n / 86400
        days.append(d)
        nh = n * d * HOURS_PER_DAY
        mem = memory_per_gpu_gib(shape, n * gpn, m.micro_batch_size, m.seq_len, m.activation_checkpointing, a)
        lay = plan_layout(m, inst, n, mfu, a)
        mem_total = mem["total"]
        if lay is not None and m.fit == "layout":
            mem_total = lay.memory_gib["total"]
        plans.append(
            ModelPlan(
                name=m.name,
                params=shape.params,
                tokens=m.tokens,
                seq_len=m.seq_len,
                mfu=mfu,
                flops=f,
                node_days_work=w / 86400,
                min_nodes_fit=fit,
                mem_gib_per_gpu=mem_total,
                nodes=n,
                days=d,
                node_hours=nh,
                dollars=None if mprice is None else nh * mprice,
                layout=None if lay is None else lay.to_dict(),
                layout_reason=None if lay is None else lay.reason,
                capacity=cap.type,
                price_per_node_hour=mprice,
                price_source=msource,
            )
        )
    prices = [p for p, _ in model_prices]
    totals = _totals(nodes, days, c.nodes, price, prices)

    seed_totals = None
    if fleet.seed_split is not None:
        sdays = []
        for p, n in zip(plans, fleet.seed_split, strict=True):
            p.seed_nodes = n
            p.seed_days = p.node_days_work / n
            p.seed_node_hours = n * p.seed_days * HOURS_PER_DAY
            p.seed_dollars = None if p.price_per_node_hour is None else p.seed_node_hours * p.price_per_node_hour
            if n < p.min_nodes_fit:
                p.seed_note = f"does not fit: needs {p.min_nodes_fit} nodes"
            sdays.append(p.seed_days)
        seed_totals = _totals(list(fleet.seed_split), sdays, c.nodes, price, prices)
        if sum(fleet.seed_split) > c.nodes:
            notes.append(f"seed split uses {sum(fleet.seed_split)} nodes, the cluster has {c.nodes}")
    if sum(nodes) < c.nodes:
        notes.append(f"{c.nodes - sum(nodes)} nodes left unassigned: the longest model is at its max_nodes")

    return Plan(
        instance_type=inst.name,
        region=c.region,
        nodes=c.nodes,
        gpus_per_node=gpn,
        gpu=inst.accelerator,
        peak_tflops=inst.peak_bf16_tflops,
        price_per_node_hour=price,
        price_source=price_source,
        objective=objective,
        models=plans,
        totals=totals,
        seed_totals=seed_totals,
        assumptions=asdict(a),
        notes=notes,
        capacity=plan_capacity(fleet, plans, caps, (price, price_source), now, _goodputs(fleet, plans, gpn)),
    )
