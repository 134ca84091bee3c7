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
Search, in order of preference (the first layout that fits with headroom wins):
  cp: 1 below 32k tokens; from 32k the smallest cp >= 2 that fits (attention memory and time grow with seq)
  tp: 1, 2, 4, 8 without activation checkpointing (never more than one node: TP+SP all-reduces per
      layer need NVLink, not EFA); when none fits, tp = GPUs per node with full checkpointing (it costs a
      recomputed forward, so it comes after TP)
  pp: 1; pipeline stages (2, 4, 8, ...) only when tp = GPUs per node + FSDP + full checkpointing cannot fit
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


@dataclass(frozen=True)
class LayoutAssumptions:
    """Memory constants (the planner's) and the layout rules' knobs."""

    state_bytes_per_param: float = 16.0
    working_bytes_per_param: float = 6.0
    units_in_flight: int = 2
    activation_bytes_per_token_hidden: float = 34.0
    checkpointed_bytes_per_token_hidden: float = 2.0
    logits_bytes_per_token_vocab: float = 6.0
    overhead_gib: float = 6.0
    headroom: float = 0.9  # a layout must fit in this fraction of the GPU's memory
    max_shard_nodes: int = 32  # an FSDP shard group spans at most this many nodes, else HSDP


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
    memory_gib: dict[str, float] = field(default_factory=dict)
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
    """GiB per GPU by part (state, working, activations, logits, overhead, total) for one layout."""
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
    a: LayoutAssumptions = DEFAULT_LAYOUT_ASSUMPTIONS,
) -> Layout | None:
    """The preferred layout that fits `nodes` x `gpus_per_node` GPUs (see the module docstring), or None.

    activation_checkpointing=True asks for full checkpointing in every candidate (the user's choice)."""
    world = nodes * gpus_per_node
    budget = gpu_memory_gib * a.headroom
    long = seq_len >= LONG_CONTEXT
    cps = [c for c in _powers_of_two(world) if c >= 2] if long else [1]
    tps = [t for t in _powers_of_two(gpus_per_node) if _tp_ok(m, t)]
    acs = [True] if activation_checkpointing else [False, True]
    # smallest tp without recompute first; then the whole node's tp, with checkpointing, then with pipeline stages
    order = [(1, tp, acs[0]) for tp in tps] + [(pp, tps[-1], ac) for pp in _powers_of_two(m.n_layers) for ac in acs]
    seen: set[tuple[int, int, bool]] = set()
    for cp in cps:
        for pp, tp, ac in order:
            if (pp, tp, ac) in seen or world % (tp * cp * pp) or seq_len % (2 * tp * cp):
                continue
            seen.add((pp, tp, ac))
            found = _fit_dp(
                m, world // (tp * cp * pp), tp, cp, pp, ac, micro_batch_size, seq_len, gpus_per_node, budget, a
            )
            if found is not None:
                rep, shard, mem = found
                lay = Layout(
                    dp_replicate=rep,
                    dp_shard=shard,
                    tp=tp,
                    cp=cp,
                    pp=pp,
                    activation_checkpointing="full" if ac else "none",
                    pp_microbatches=2 * pp if pp > 1 else None,
                    loss_parallel=tp > 1,
                    memory_gib=mem,
                )
                lay.reason = _reason(lay, m, seq_len, gpus_per_node, gpu_memory_gib, a, activation_checkpointing)
                return lay
        seen.clear()
    return None


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
    """(dp_replicate, dp_shard, memory) with the shard group within max_shard_nodes if memory allows."""
    inner = tp * cp  # ranks of one shard-group member (pp is outermost)
    options = [s for s in range(dp, 0, -1) if dp % s == 0]
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
        parts.append(
            f"pp {lay.pp}: tp {gpn} + FSDP does not fit; {math.ceil(m.n_layers / lay.pp)} layers per stage, "
            f"{lay.pp_microbatches} micro batches (bubble ~{(lay.pp - 1) / ((lay.pp_microbatches or 1) + lay.pp - 1):.0%})"
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
    return "; ".join(parts)


def layout_model_from_config(cfg: Any) -> LayoutModel:
    """LayoutModel of a ModelConfig (the trainer's analytic counts, mltrain.model.flops)."""
    from mltrain.model.flops import param_count

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
    )
