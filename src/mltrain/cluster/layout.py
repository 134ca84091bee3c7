"""The planner's parallel layout: dp_replicate x dp_shard x cp x tp x pp and activation checkpointing.

Pure functions (no torch). Memory per GPU of one layout, extending the planner's FSDP model
(mltrain.cluster.planner, same constants):
  stage params    = ceil(layers / pp) x layer params + the non-layer params (embedding, head, norm;
                    with pp > 1 the biggest stage holds one of the embedding / head matrices)
  state           = stage params / tp x 16 B / (dp_shard x cp)   (FSDP shards over dp_shard x cp;
                    dp_replicate keeps full copies of the shard)
  working         = 2 units x largest unit / tp x 6 B
  activations     = stage layers x in-flight micro batches x 34 B x (micro_batch x seq / cp) x hidden / tp
                    (sequence parallel splits every activation over tp; 1F1B keeps pp micro batches in
                    flight on the first stage); full checkpointing keeps 2 B per layer (the layer input)
                    + one layer recomputed at 34 B
  logits          = micro_batch x seq / cp x vocab / tp x 6 B   (loss parallel shards the vocabulary)
  overhead        = 6 GiB
micro_batch is the planner's micro batch: the sequences one data-parallel rank runs through the model at
once. Without pp that is the run's train.micro_batch_size; with pp it is one pipeline micro batch, and the
run's train.micro_batch_size (which the trainer's pipeline splits into pp_microbatches equal pieces) is
micro_batch x pp_microbatches: the layout carries it as train_micro_batch_size and the overrides write it.
Search, in order of preference (the first layout that fits with headroom wins):
  cp: 1 below 32k tokens; from 32k the smallest cp >= 2 that fits (attention memory and time grow with seq)
  tp: 1, 2, 4, 8 without activation checkpointing (never more than one node: TP+SP all-reduces per
      layer need NVLink, not EFA); when none fits, tp = GPUs per node with full checkpointing (it costs a
      recomputed forward, so it comes after TP)
  pp: 1; pipeline stages (2, 4, 8, ..., 1F1B with 2 x pp micro batches) only when tp = GPUs per node + FSDP
      + full checkpointing cannot fit, or FSDP's traffic would exceed compute; never for a tied embedding
      (the trainer cannot put one matrix on the first and the last stage)
  dp: the rest; HSDP (dp_replicate > 1) when the shard group would span more than `max_shard_nodes`
      nodes, with the smallest replication that still fits (all-gathers stay within the shard group).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1024**3
LONG_CONTEXT = 32768


@dataclass(frozen=True)
class LayoutModel:
    """A model's shape as the layout search needs it (heads None: not known, not checked)."""

    params: float
    n_layers: int
    hidden_size: int
    vocab_size: int
    layer_params: float
    largest_unit_params: float
    n_heads: int | None = None
    n_kv_heads: int | None = None
    matmul_params: float | None = None  # N of 6N; None: params
    tie_embeddings: bool = False  # the head is the embedding: no pipeline stages (first and last would share it)


@dataclass(frozen=True)
class Bandwidth:
    """What the step-time estimate needs: compute rate and the links (None anywhere: no estimate)."""

    peak_flops: float  # per GPU, bf16 dense
    mfu: float
    efa_gbytes_per_s: float  # per GPU, across nodes (instance network / GPUs per node)


@dataclass(frozen=True)
class MemoryAssumptions:
    """The memory model's constants, the planner's and the layout search's (cluster/planner.py's docstring
    says what each one counts)."""

    state_bytes_per_param: float = 16.0
    working_bytes_per_param: float = 6.0
    units_in_flight: int = 2
    activation_bytes_per_token_hidden: float = 34.0
    checkpointed_bytes_per_token_hidden: float = 2.0
    logits_bytes_per_token_vocab: float = 6.0
    overhead_gib: float = 6.0


@dataclass(frozen=True)
class LayoutAssumptions(MemoryAssumptions):
    """The memory constants and the layout rules' knobs."""

    headroom: float = 0.9  # a layout must fit in this fraction of the GPU's memory
    max_shard_nodes: int = 32  # an FSDP shard group spans at most this many nodes, else HSDP
    nvlink_gbytes_per_s: float = 450.0  # per GPU per direction (H100 / H200 NVLink 4)
    fsdp_bytes_per_param: float = 8.0  # bf16 all-gather forward + backward, fp32 reduce-scatter
    tp_bytes_per_token_hidden_layer: float = 16.0  # 8 SP all-gathers / reduce-scatters per layer, bf16
    recompute_factor: float = 4.0 / 3.0  # full checkpointing: one more forward (8N instead of 6N)
    min_layers_per_stage: int = 4  # fewer and a pipeline stage is mostly bubble and point-to-point sends


DEFAULT_LAYOUT_ASSUMPTIONS = LayoutAssumptions()


@dataclass
class Layout:
    """A chosen layout, its memory per GPU by part, and why it was chosen."""

    dp_replicate: int
    dp_shard: int
    tp: int
    cp: int
    pp: int
    activation_checkpointing: str  # "none" | "full"
    pp_schedule: str = "1F1B"
    pp_microbatches: int | None = None
    loss_parallel: bool = False
    # the run's train.micro_batch_size this layout is sized for (sequences per data-parallel rank per optimizer
    # micro step): the planner's micro batch, x pp_microbatches with pp > 1 (the pipeline splits it); None: a
    # layout made by hand
    train_micro_batch_size: int | None = None
    memory_gib: dict[str, float] = field(default_factory=dict)
    step_estimate_s: dict[str, float] | None = None  # compute, fsdp, tp, bubble, step, per_token_us
    reason: str = ""

    @property
    def gpus(self) -> int:
        return self.dp_replicate * self.dp_shard * self.tp * self.cp * self.pp

    def short(self) -> str:
        """Compact text for a table cell, e.g. `fsdp32 tp8` or `hsdp2x32 tp8 pp8 ac`."""
        dp = f"hsdp{self.dp_replicate}x{self.dp_shard}" if self.dp_replicate > 1 else f"fsdp{self.dp_shard}"
        parts = [dp] + [f"{k}{v}" for k, v in (("cp", self.cp), ("tp", self.tp), ("pp", self.pp)) if v > 1]
        if self.activation_checkpointing != "none":
            parts.append("ac")
        return " ".join(parts)

    def parallel_block(self) -> dict[str, Any]:
        """The run config's `parallel:` block for this layout."""
        return {
            "dp_replicate": self.dp_replicate,
            "dp_shard": self.dp_shard,
            "tp": self.tp,
            "cp": self.cp,
            "pp": self.pp,
            "pp_schedule": self.pp_schedule,
            "pp_microbatches": self.pp_microbatches,
            "loss_parallel": self.loss_parallel,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layout_memory_gib(
    m: LayoutModel,
    *,
    dp_shard: int,
    tp: int,
    cp: int,
    pp: int,
    micro_batch_size: int,
    seq_len: int,
    checkpointing: bool,
    a: LayoutAssumptions = DEFAULT_LAYOUT_ASSUMPTIONS,
) -> dict[str, float]:
    """GiB per GPU by part (state, working, activations, logits, overhead, total) for one layout.
    micro_batch_size: the planner's micro batch (one pipeline micro batch with pp > 1; module docstring)."""
    if min(dp_shard, tp, cp, pp) <= 0:
        raise ValueError(f"layout degrees must be positive, got dp_shard {dp_shard} tp {tp} cp {cp} pp {pp}")
    stage_layers = math.ceil(m.n_layers / pp)
    rest = m.params - m.n_layers * m.layer_params  # embedding, head, final norm
    if pp > 1:  # the first stage holds the embedding, the last the head (+ final norm): count one of them
        rest = min(rest, float(m.vocab_size * m.hidden_size + m.hidden_size))
    stage_params = stage_layers * m.layer_params + rest
    tokens = micro_batch_size * seq_len / cp
    in_flight = pp  # 1F1B: the first stage holds pp micro batches' activations
    per_layer = tokens * m.hidden_size / tp
    if checkpointing:
        act = per_layer * (
            stage_layers * in_flight * a.checkpointed_bytes_per_token_hidden + a.activation_bytes_per_token_hidden
        )
    else:
        act = per_layer * stage_layers * in_flight * a.activation_bytes_per_token_hidden
    parts = {
        "state": stage_params / tp * a.state_bytes_per_param / (dp_shard * cp) / GIB,
        "working": a.units_in_flight * m.largest_unit_params / tp * a.working_bytes_per_param / GIB,
        "activations": act / GIB,
        "logits": tokens * m.vocab_size / tp * a.logits_bytes_per_token_vocab / GIB,
        "overhead": a.overhead_gib,
    }
    parts["total"] = sum(parts.values())
    return parts


def _powers_of_two(limit: int) -> list[int]:
    out, k = [], 1
    while k <= limit:
        out.append(k)
        k *= 2
    return out


def _tp_ok(m: LayoutModel, tp: int) -> bool:
    return all(h is None or h % tp == 0 for h in (m.n_heads, m.n_kv_heads))


def choose_layout(
    m: LayoutModel,
    *,
    nodes: int,
    gpus_per_node: int,
    gpu_memory_gib: float,
    seq_len: int,
    micro_batch_size: int = 1,
    activation_checkpointing: bool = False,
    bandwidth: Bandwidth | None = None,
    a: LayoutAssumptions = DEFAULT_LAYOUT_ASSUMPTIONS,
) -> Layout | None:
    """The layout for `nodes` x `gpus_per_node` GPUs (see the module docstring), or None when none fits.

    Without `bandwidth` the first candidate that fits wins; with it, the fitting candidate of the lowest
    estimated time per token (a later candidate must be 5% faster to displace an earlier one).
    activation_checkpointing=True asks for full checkpointing in every candidate (the user's choice)."""
    world = nodes * gpus_per_node
    budget = gpu_memory_gib * a.headroom
    long = seq_len >= LONG_CONTEXT
    cps = [c for c in _powers_of_two(world) if c >= 2] if long else [1]
    tps = [t for t in _powers_of_two(gpus_per_node) if _tp_ok(m, t)]
    acs = [True] if activation_checkpointing else [False, True]
    pps = [1] if m.tie_embeddings else _powers_of_two(m.n_layers // a.min_layers_per_stage or 1)
    # smallest tp without recompute first; then the whole node's tp with checkpointing, then pipeline stages
    order = [(1, tp, acs[0]) for tp in tps] + [(pp, tps[-1], ac) for pp in pps for ac in acs]
    for cp in cps:
        fits: list[Layout] = []
        seen: set[tuple[int, int, bool]] = set()
        for pp, tp, ac in order:
            if (pp, tp, ac) in seen or world % (tp * cp * pp) or seq_len % (2 * tp * cp):
                continue
            seen.add((pp, tp, ac))
            found = _fit_dp(
                m, world // (tp * cp * pp), tp, cp, pp, ac, micro_batch_size, seq_len, gpus_per_node, budget, a
            )
            if found is None:
                continue
            rep, shard, mem = found
            n_micro = 2 * pp if pp > 1 else None
            lay = Layout(
                dp_replicate=rep,
                dp_shard=shard,
                tp=tp,
                cp=cp,
                pp=pp,
                activation_checkpointing="full" if ac else "none",
                pp_microbatches=n_micro,
                loss_parallel=tp > 1,
                train_micro_batch_size=micro_batch_size * (n_micro or 1),
                memory_gib=mem,
            )
            if bandwidth is None:
                lay.reason = _reason(lay, m, seq_len, gpus_per_node, gpu_memory_gib, a, activation_checkpointing)
                return lay
            lay.step_estimate_s = step_time_s(lay, m, micro_batch_size, seq_len, gpus_per_node, bandwidth, a)
            fits.append(lay)
        if fits:
            best = _fastest([x for x in fits if x.pp == 1]) or _fastest(fits)
            assert best is not None and best.step_estimate_s is not None
            if best.pp == 1 and best.step_estimate_s["fsdp"] > best.step_estimate_s["compute"]:
                # FSDP traffic is exposed: pipeline stages shrink it (each GPU gathers only its stage)
                staged = _fastest([x for x in fits if x.pp > 1])
                if staged is not None and _faster(staged, best):
                    best = staged
            flat = any(x.pp == 1 for x in fits)
            best.reason = _reason(best, m, seq_len, gpus_per_node, gpu_memory_gib, a, activation_checkpointing, flat)
            return best
    return None


def _faster(x: Layout, y: Layout) -> bool:
    """x beats y by 5% in estimated time per token (smaller differences are within the model's error)."""
    assert x.step_estimate_s is not None and y.step_estimate_s is not None
    return x.step_estimate_s["per_token_us"] < 0.95 * y.step_estimate_s["per_token_us"]


def _fastest(layouts: list[Layout]) -> Layout | None:
    """The first of `layouts` (in order of preference) unless a later one is 5% faster."""
    best = layouts[0] if layouts else None
    for lay in layouts[1:]:
        if _faster(lay, best):  # type: ignore[arg-type]
            best = lay
    return best


def step_time_s(
    lay: Layout,
    m: LayoutModel,
    micro_batch_size: int,
    seq_len: int,
    gpus_per_node: int,
    bw: Bandwidth,
    a: LayoutAssumptions = DEFAULT_LAYOUT_ASSUMPTIONS,
) -> dict[str, float]:
    """Rough seconds of one optimizer step (no gradient accumulation) by part, and microseconds per token.
    micro_batch_size: the planner's micro batch, so a data-parallel rank's step takes it x pp_microbatches
    sequences (the run's train.micro_batch_size).

    compute: (6N + 12 L hidden seq) FLOPs per token over tp x cp x pp GPUs at peak x MFU (x 4/3 with full
    checkpointing), plus the 1F1B bubble (pp - 1) / micro batches; fsdp: 8 B per parameter of the stage
    over the shard group (EFA when it spans nodes, else NVLink), overlapped with compute, once per step
    with pp (the stage stays gathered over its micro batches) and once per micro batch without; HSDP adds
    an fp32 all-reduce of the shard over EFA; tp: 16 B x tokens x hidden per layer over NVLink, not
    overlapped. CP's ring exchange and PP's point-to-point sends are not counted."""
    micro = lay.pp_microbatches or 1
    tokens = micro_batch_size * seq_len * micro  # per data-parallel rank per step
    n = m.matmul_params if m.matmul_params is not None else m.params
    flops_tok = 6.0 * n + 12.0 * m.n_layers * m.hidden_size * seq_len
    compute = flops_tok * tokens / (lay.tp * lay.cp * lay.pp) / (bw.peak_flops * bw.mfu)
    if lay.activation_checkpointing == "full":
        compute *= a.recompute_factor
    bubble = compute * (lay.pp - 1) / micro
    stage_layers = math.ceil(m.n_layers / lay.pp)
    rest = m.params - m.n_layers * m.layer_params
    if lay.pp > 1:
        rest = min(rest, float(m.vocab_size * m.hidden_size + m.hidden_size))
    stage_params = (stage_layers * m.layer_params + rest) / lay.tp
    group = lay.dp_shard * lay.cp
    spans_nodes = group * lay.tp > gpus_per_node
    link = bw.efa_gbytes_per_s if spans_nodes else a.nvlink_gbytes_per_s
    fsdp = a.fsdp_bytes_per_param * stage_params * (group - 1) / group / (link * 1e9) if group > 1 else 0.0
    if lay.dp_replicate > 1:
        fsdp += 2 * 4.0 * stage_params / group * (lay.dp_replicate - 1) / lay.dp_replicate / (bw.efa_gbytes_per_s * 1e9)
    tp = (
        a.tp_bytes_per_token_hidden_layer * tokens / lay.cp * m.hidden_size * stage_layers * (lay.tp - 1) / lay.tp
    ) / (a.nvlink_gbytes_per_s * 1e9)
    step = max(compute + bubble, fsdp) + tp
    dp = lay.dp_replicate * lay.dp_shard
    return {
        "compute": compute,
        "bubble": bubble,
        "fsdp": fsdp,
        "tp": tp,
        "step": step,
        "per_token_us": step / (tokens * dp) * 1e6,
    }


def _fit_dp(
    m: LayoutModel,
    dp: int,
    tp: int,
    cp: int,
    pp: int,
    ac: bool,
    micro_batch_size: int,
    seq_len: int,
    gpus_per_node: int,
    budget: float,
    a: LayoutAssumptions,
) -> tuple[int, int, dict[str, float]] | None:
    """(dp_replicate, dp_shard, memory) with the shard group within max_shard_nodes if memory allows.
    Replicas without sharding (DDP) are left out under tp or pp: the trainer runs neither with DDP."""
    inner = tp * cp  # ranks of one shard-group member (pp is outermost)
    options = [s for s in range(dp, 0, -1) if dp % s == 0 and (s > 1 or s == dp or (tp == 1 and pp == 1))]
    within = [s for s in options if math.ceil(s * inner / gpus_per_node) <= a.max_shard_nodes]
    # shard as widely as the node limit allows, then more replication; wider groups only if nothing fits
    ordered = within + [s for s in reversed(options) if s not in within]
    for shard in ordered:
        mem = layout_memory_gib(
            m,
            dp_shard=shard,
            tp=tp,
            cp=cp,
            pp=pp,
            micro_batch_size=micro_batch_size,
            seq_len=seq_len,
            checkpointing=ac,
            a=a,
        )
        if mem["total"] <= budget:
            return dp // shard, shard, mem
    return None


def _reason(
    lay: Layout,
    m: LayoutModel,
    seq_len: int,
    gpn: int,
    gpu_gib: float,
    a: LayoutAssumptions,
    ac_asked: bool,
    flat_fits: bool = False,
) -> str:
    fit = f"{lay.memory_gib['total']:.1f} of {gpu_gib:g} GiB/GPU"
    parts = []
    if lay.cp > 1:
        parts.append(f"cp {lay.cp}: seq {seq_len} >= {LONG_CONTEXT // 1024}k, each rank holds seq/{lay.cp} tokens")
    if lay.tp > 1:
        parts.append(f"tp {lay.tp} inside each node (NVLink): splits weights and activations {lay.tp} ways")
    else:
        parts.append("no tp: FSDP alone fits")
    if lay.pp > 1:
        pp_why = (
            "FSDP traffic would exceed compute without stages"
            if lay.step_estimate_s is not None and flat_fits
            else f"tp {gpn} + FSDP does not fit"
        )
        n_micro = lay.pp_microbatches or lay.pp
        per_micro = (lay.train_micro_batch_size or n_micro) // n_micro
        parts.append(
            f"pp {lay.pp}: {pp_why}; {math.ceil(m.n_layers / lay.pp)} layers per stage, "
            f"{n_micro} micro batches of {per_micro} sequence{'s' if per_micro != 1 else ''} "
            f"(train.micro_batch_size {per_micro * n_micro}; bubble ~{(lay.pp - 1) / (n_micro + lay.pp - 1):.0%})"
        )
    shard_nodes = math.ceil(lay.dp_shard * lay.tp * lay.cp / gpn)
    if lay.dp_replicate > 1:
        parts.append(
            f"hsdp {lay.dp_replicate} x {lay.dp_shard}: shard groups of {shard_nodes} nodes "
            f"(<= {a.max_shard_nodes}) keep all-gathers short, replicas all-reduce grads over EFA"
        )
    else:
        parts.append(f"dp_shard {lay.dp_shard}: FSDP across {shard_nodes} node(s)")
    if lay.activation_checkpointing == "full":
        parts.append("full activation checkpointing: " + ("asked for" if ac_asked else "needed to fit"))
    parts.append(f"fits {fit}")
    est = lay.step_estimate_s
    if est is not None:
        parts.append(
            f"est. step {est['step']:.2f} s (compute {est['compute'] + est['bubble']:.2f}, FSDP {est['fsdp']:.2f} "
            f"overlapped, TP {est['tp']:.2f})"
        )
    return "; ".join(parts)


def layout_model_from_config(cfg: Any) -> LayoutModel:
    """LayoutModel of a ModelConfig (the trainer's analytic counts, mltrain.model.flops)."""
    from mltrain.model.flops import matmul_params, param_count

    d = cfg.hidden_size
    emb = cfg.vocab_size * d
    body = param_count(cfg, include_embedding=False) - (0 if cfg.tie_embeddings else emb)
    per_layer = (body - d) / cfg.n_layers
    return LayoutModel(
        params=float(param_count(cfg)),
        n_layers=cfg.n_layers,
        hidden_size=d,
        vocab_size=cfg.vocab_size,
        layer_params=float(per_layer),
        largest_unit_params=float(max(per_layer, emb)),
        n_heads=cfg.n_heads,
        n_kv_heads=cfg.n_kv_heads,
        matmul_params=float(matmul_params(cfg)),
        tie_embeddings=cfg.tie_embeddings,
    )


def layout_overrides(layout: dict[str, Any] | None) -> list[str]:
    """`--set` overrides that write a planned layout into a run config: the `parallel:` block; with pp > 1
    `train.micro_batch_size` = the planner's micro batch x pp_microbatches (the trainer's pipeline splits the
    run's micro batch into pp_microbatches pieces, each the micro batch the planner sized); and
    `train.activation_checkpointing=true` when the layout needs it (never false: a run that asks for
    checkpointing keeps it). Without pp the run's micro batch is the planner's and is left as it is."""
    if layout is None:
        return []
    out = []
    for key in ("dp_replicate", "dp_shard", "tp", "cp", "pp", "pp_schedule", "pp_microbatches", "loss_parallel"):
        value = layout[key]
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        out.append(f"parallel.{key}={text}")
    if layout["pp"] > 1:
        if layout.get("train_micro_batch_size") is None:
            raise ValueError("a pipeline layout needs train_micro_batch_size (the run's micro batch it was sized for)")
        out.append(f"train.micro_batch_size={layout['train_micro_batch_size']}")
    if layout.get("activation_checkpointing", "none") != "none":
        out.append("train.activation_checkpointing=true")
    return out
