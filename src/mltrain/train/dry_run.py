"""The memory of a parallel layout on N ranks, sized in one CPU process without any GPU (`mltrain train
CONFIG --dry-run-ranks N`).

For each pipeline coordinate whose stages differ, this process joins torch's "fake" process group (a
FakeStore and the fake backend: collectives return at once and move nothing) as one representative
rank, builds the world DeviceMesh, builds the model on the meta device, cuts it to the rank's pipeline
stages and parallelizes it with the trainer's own functions (TP + SP, activation checkpointing, FSDP2 /
HSDP). Each parameter's `to_local()` shape is then what that rank would hold, and the bytes of the
parameters, gradients and optimizer state follow from those shapes (torch's FSDPMemTracker overstates CPU
optimizer state, so nothing is tracked, only counted). Activations cannot be measured on meta tensors;
they are estimated with the planner's constants (cluster/layout.py), so the two agree.

The representative rank of a pipeline coordinate has every other coordinate 0. FSDP2 shards dim 0 of
each tensor with torch.chunk (ceil division: the first chunks are full, the last may be short or empty)
and pads every rank's shard to that ceil size, so coordinate 0 holds exactly what every rank of the
shard group allocates; tensor parallel's coordinate 0 likewise holds the largest slice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from mltrain.cluster.layout import DEFAULT_LAYOUT_ASSUMPTIONS, MemoryAssumptions
from mltrain.config import STAGES_PER_RANK, ParallelConfig, RunConfig, resolve_parallel
from mltrain.errors import ConfigError

GIB = 1024**3
FP32_BYTES = 4
DEFAULT_GPU_MEMORY_GIB = 80.0  # an H100 / A100 80 GB

CANNOT_CHECK = (
    "speed: no kernel runs, so no step time, MFU, pipeline bubble or overlap of communication with compute",
    "NCCL / EFA: the fake process group moves no bytes (no bandwidth, topology, hangs or timeouts)",
    "the CUDA caching allocator: fragmentation and reserved-but-unused memory are not measured "
    "(the overhead row is the planner's assumption)",
    "CUDA kernels: which attention kernel runs, compile, bf16 numerics",
    "activations: estimated by formula, since nothing runs forward on meta tensors",
    "context parallel: its numerics need the CUDA attention kernels",
)


@dataclass(frozen=True)
class Part:
    """One row of a rank's memory: what it is, how many elements, how many bytes, and how it is counted."""

    name: str
    elements: int | None
    bytes: int
    how: str


@dataclass
class RankKind:
    """The ranks of one or more pipeline coordinates that hold the same shapes and the same memory."""

    pp_ranks: list[int]
    ranks_per_pp_rank: int  # every rank of a pp coordinate (dp x cp x tp of them) holds the same
    representative: int  # the global rank measured (pp coordinate pp_ranks[0], every other coordinate 0)
    stages: list[int]
    layers: list[range]  # per stage, in the order of `stages`
    first: bool  # holds the token embedding
    last: bool  # holds the final norm and the head
    in_flight: int  # pipeline micro batches (chunk forwards, looped) whose activations it holds at its peak
    shapes: dict[str, tuple[int, ...]]  # parameter name -> this rank's local shard shape
    parts: list[Part]

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.parts)

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)

    def column_words(self) -> str:
        """`pp 0`, `pp 1-5`; `every rank` without pipeline stages."""
        if self.first and self.last:  # the whole model: no pipeline
            return "every rank"
        lo, hi = self.pp_ranks[0], self.pp_ranks[-1]
        return f"pp {lo}" if lo == hi else f"pp {lo}-{hi}"

    def ranks_words(self) -> str:
        """`pp rank 0 (ranks 0-63)`, `pp ranks 1-5 (ranks 64-383)`; `ranks 0-7` without pipeline stages."""
        n = self.ranks_per_pp_rank
        lo, hi = self.pp_ranks[0], self.pp_ranks[-1]
        first, last = lo * n, (hi + 1) * n - 1
        ranks = f"rank {first}" if first == last else f"ranks {first}-{last}"
        if self.first and self.last:
            return ranks
        return f"{'pp rank' if lo == hi else 'pp ranks'} {lo if lo == hi else f'{lo}-{hi}'} ({ranks})"

    def holds_words(self) -> str:
        """`stage 0: layers 0-15 + embedding`; `layers 0-31 + embedding + norm + head` without a pipeline;
        `16 layers each` for several pp ranks of one kind."""
        extra = [w for w, on in (("embedding", self.first), ("norm + head", self.last)) if on]
        if len(self.pp_ranks) > 1:
            return " + ".join(str(len(r)) for r in self.layers) + " layers each" + "".join(f" + {w}" for w in extra)
        out = []
        for s, r in zip(self.stages, self.layers, strict=True):
            text = f"layers {r.start}-{r.stop - 1}" if len(r) > 1 else f"layer {r.start}"
            out.append(text if self.first and self.last else f"stage {s}: {text}")
        return ", ".join(out) + "".join(f" + {w}" for w in extra)


@dataclass
class DryRun:
    """A layout on `world_size` ranks and the memory of each kind of rank in it."""

    world_size: int
    layout: ParallelConfig
    device: str  # the device the real run trains on ("cuda" unless the config says cpu)
    bf16: bool
    activation_checkpointing: str  # none, full or selective (train.parallel.ac_mode)
    micro_batch_size: int  # sequences per pipeline micro batch (the run's micro batch / pp micro batches)
    seq_len: int
    n_microbatches: int
    stage_layers: list[int]
    gpu_memory_gib: float
    kinds: list[RankKind]
    seconds: float
    cannot_check: tuple[str, ...] = field(default=CANNOT_CHECK)

    def layout_words(self) -> str:
        """`dp_shard 8 x tp 8 x pp 8`: the degrees above 1 (`one rank` when none is)."""
        p = self.layout
        names = ("dp_replicate", "dp_shard", "cp", "tp", "pp")
        return " x ".join(f"{n} {getattr(p, n)}" for n in names if getattr(p, n) > 1) or "one rank"

    def fits(self, kind: RankKind) -> bool:
        return kind.total_bytes <= self.gpu_memory_gib * GIB


# --------------------------------------------------------------------------- formulas


def in_flight_microbatches(schedule: str, pp_rank: int, pp: int, n_microbatches: int) -> int:
    """Pipeline micro batches (chunk forwards, for looped schedules) whose activations pp rank `pp_rank`
    holds at its peak, as torch.distributed.pipelining schedules them: GPipe runs every forward before
    any backward; 1F1B warms up with pp - rank forwards and then does a backward before each forward (the
    first stage holds pp, as the planner assumes); Interleaved1F1B warms up with (v - 1) x micro batches
    per round + 2 x (pp - 1 - rank) chunk forwards and does one more forward before its first backward.
    n_microbatches: the trainer's count (ParallelConfig.microbatches())."""
    if pp == 1:
        return 1
    if schedule == "GPipe":
        return n_microbatches
    if schedule == "1F1B":
        return min(n_microbatches, pp - pp_rank)
    v = STAGES_PER_RANK[schedule]
    per_round = n_microbatches // max(1, n_microbatches // pp)
    warmup = min((v - 1) * per_round + 2 * (pp - 1 - pp_rank), n_microbatches * v)
    return min(warmup + 1, n_microbatches * v)


def activation_bytes(
    *,
    tokens: float,
    hidden: int,
    tp: int,
    layers: int,
    in_flight: int,
    checkpointing: bool,
    a: MemoryAssumptions = DEFAULT_LAYOUT_ASSUMPTIONS,
) -> float:
    """The planner's activation estimate (cluster/layout.py) for `layers` blocks with `in_flight` micro
    batches of `tokens` tokens: 34 B per token x hidden / tp per layer (sequence parallel splits every
    activation over tp); full checkpointing keeps only each layer's input (2 B) plus one layer recomputed."""
    per_layer = tokens * hidden / tp
    if checkpointing:
        return per_layer * (
            layers * in_flight * a.checkpointed_bytes_per_token_hidden + a.activation_bytes_per_token_hidden
        )
    return per_layer * layers * in_flight * a.activation_bytes_per_token_hidden


def logits_bytes(
    *, tokens: float, vocab: int, tp: int, loss_parallel: bool, a: MemoryAssumptions = DEFAULT_LAYOUT_ASSUMPTIONS
) -> float:
    """One micro batch's logits, bf16 and their fp32 copy for the loss (the planner's 6 B per token x
    vocab); loss parallel keeps them split over tp, otherwise the head gathers the whole vocabulary."""
    return tokens * vocab / (tp if loss_parallel else 1) * a.logits_bytes_per_token_vocab


# --------------------------------------------------------------------------- the dry run


@dataclass
class _Shards:
    """What one representative rank holds: local shard shapes and element sizes, and FSDP's units."""

    shapes: dict[str, tuple[int, ...]]
    element_bytes: dict[str, int]
    unit_elements: list[int]  # per FSDP unit (each block, then each chunk's root): its local elements


def dry_run_ranks(cfg: RunConfig, world_size: int, gpu_memory_gib: float = DEFAULT_GPU_MEMORY_GIB) -> DryRun:
    """Size `cfg`'s layout on `world_size` ranks (see the module docstring). ConfigError (one line) for a
    layout the run could not start with on that many ranks (what needs no world size, e.g. a pipeline's
    stages and micro batches, the config's own validation refused as it loaded)."""
    start = time.perf_counter()
    if cfg.model is None:
        raise ConfigError("the dry run sizes the built-in trainer's model; this run config has no model:")
    if world_size < 1:
        raise ConfigError("a world needs at least one rank")
    device = "cpu" if cfg.train.device == "cpu" else "cuda"
    layout = resolve_parallel(cfg, world_size, device)
    if layout.fixed_product() != world_size:  # the shorthand train.parallel: none is one process
        raise ConfigError(
            f"train.parallel: none trains one process, not {world_size}; use --set train.parallel=fsdp (or ddp), "
            "or a parallel: block"
        )
    from mltrain.train.parallel import ac_mode
    from mltrain.train.stages import rank_stage_ids, stage_layer_ranges

    m, t = cfg.model, cfg.train
    ac = ac_mode(t.activation_checkpointing)
    # the memory model leaves out what selective checkpointing saves: only full keeps just the layer inputs
    full_ac = ac == "full"
    per_rank = STAGES_PER_RANK[layout.pp_schedule] if layout.pp > 1 else 1
    n_stages = layout.n_stages()
    ranges = stage_layer_ranges(m.n_layers, n_stages)
    n_mb = layout.microbatches() if layout.pp > 1 else 1  # the trainer's split of each local batch
    bf16 = t.dtype == "bf16" or (t.dtype == "auto" and device == "cuda")
    inner = world_size // layout.pp  # ranks per pp coordinate
    fsdp = layout.dp_shard > 1
    ddp = not fsdp and layout.dp_replicate > 1

    measured: dict[tuple, tuple[list[range], _Shards]] = {}  # stage shapes -> the first such rank's layers, shards
    kinds: list[RankKind] = []
    mb = t.micro_batch_size // n_mb
    tokens = mb * t.seq_len / layout.cp
    for pp_rank in range(layout.pp):
        stage_ids = rank_stage_ids(pp_rank, layout.pp, per_rank)
        stages = [(ranges[s], s == 0, s == n_stages - 1) for s in stage_ids]
        key = tuple((len(r), f, la) for r, f, la in stages)
        layers = [r for r, _, _ in stages]
        if key not in measured:
            shards = _measure(cfg, layout, world_size, pp_rank * inner, stages, bf16=bf16, wrap=not ddp)
            measured[key] = (layers, shards)
        else:  # the same stage sizes as an earlier pp rank: its shards, under this rank's layer indices
            shards = _renumber(*measured[key], layers)
        first, last = any(f for _, f, _ in stages), any(la for _, _, la in stages)
        in_flight = in_flight_microbatches(layout.pp_schedule, pp_rank, layout.pp, n_mb)
        act = activation_bytes(
            tokens=tokens,
            hidden=m.hidden_size,
            tp=layout.tp,
            layers=max(len(r) for r, _, _ in stages),
            in_flight=in_flight,
            checkpointing=full_ac,
        )
        lgt = logits_bytes(tokens=tokens, vocab=m.vocab_size, tp=layout.tp, loss_parallel=layout.loss_parallel)
        parts = _parts(
            shards,
            layout=layout,
            fsdp=fsdp,
            ddp=ddp,
            bf16=bf16,
            act=act,
            checkpointing=full_ac,
            logits=lgt if last else 0.0,
        )
        kind = RankKind(
            pp_ranks=[pp_rank],
            ranks_per_pp_rank=inner,
            representative=pp_rank * inner,
            stages=stage_ids,
            layers=layers,
            first=first,
            last=last,
            in_flight=in_flight,
            shapes=shards.shapes,
            parts=parts,
        )
        prev = kinds[-1] if kinds else None
        if prev is not None and _same(prev, kind):
            prev.pp_ranks.append(pp_rank)
        else:
            kinds.append(kind)
    return DryRun(
        world_size=world_size,
        layout=layout,
        device=device,
        bf16=bf16,
        activation_checkpointing=ac,
        micro_batch_size=mb,
        seq_len=t.seq_len,
        n_microbatches=n_mb,
        stage_layers=[len(r) for r in ranges],
        gpu_memory_gib=gpu_memory_gib,
        kinds=kinds,
        seconds=time.perf_counter() - start,
    )


def _renumber(old: list[range], shards: _Shards, new: list[range]) -> _Shards:
    """`shards` measured on stages holding the `old` layers, named for stages of the same sizes holding `new`."""
    index = {o: n for o_range, n_range in zip(old, new, strict=True) for o, n in zip(o_range, n_range, strict=True)}

    def rename(key: str) -> str:
        head, _, rest = key.partition(".")
        if head != "layers":
            return key
        i, _, tail = rest.partition(".")
        return f"layers.{index[int(i)]}.{tail}"

    return _Shards(
        shapes={rename(k): v for k, v in shards.shapes.items()},
        element_bytes={rename(k): v for k, v in shards.element_bytes.items()},
        unit_elements=shards.unit_elements,
    )


def _same(a: RankKind, b: RankKind) -> bool:
    """Neighbouring pp ranks that hold the same shapes and the same bytes in every row are one kind."""
    return (
        a.pp_ranks[-1] + 1 == b.pp_ranks[0]
        and sorted(a.shapes.values()) == sorted(b.shapes.values())
        and a.parts == b.parts
        and (a.first, a.last, a.in_flight) == (b.first, b.last, b.in_flight)
    )


def _parts(
    s: _Shards,
    *,
    layout: ParallelConfig,
    fsdp: bool,
    ddp: bool,
    bf16: bool,
    act: float,
    checkpointing: bool,
    logits: float,
) -> list[Part]:
    """The rows of one rank's memory, from its local shard shapes."""
    a = DEFAULT_LAYOUT_ASSUMPTIONS
    n = sum(math.prod(shape) for shape in s.shapes.values())
    param_bytes = sum(math.prod(shape) * s.element_bytes[k] for k, shape in s.shapes.items())
    split = []
    if layout.tp > 1:
        split.append(f"tp {layout.tp}")
    if fsdp:
        split.append(f"dp_shard {layout.dp_shard}")
    where = ("sharded over " + " x ".join(split)) if split else "whole"
    compute = 2 if bf16 else FP32_BYTES
    parts = [
        Part("parameters", n, param_bytes, f"fp32 master weights, {where}"),
        Part("gradients", n, param_bytes, f"fp32 (like the parameters), {where}"),
        # fused AdamW: exp_avg and exp_avg_sq like each parameter, and a 4-byte step tensor per parameter
        Part(
            "optimizer",
            2 * n,
            2 * param_bytes + FP32_BYTES * len(s.shapes),
            "AdamW exp_avg + exp_avg_sq, fp32, + a 4-byte step per tensor",
        ),
    ]
    if fsdp:
        largest = max(s.unit_elements)
        gathered = largest * layout.dp_shard
        per = compute + FP32_BYTES
        parts.append(
            Part(
                "FSDP gathered",
                a.units_in_flight * gathered,
                a.units_in_flight * gathered * per,
                f"{a.units_in_flight} units in flight (current + prefetched) x the largest all-gathered unit, "
                f"{'bf16' if bf16 else 'fp32'} weights + fp32 gradients before the reduce-scatter",
            )
        )
    else:
        cache = n * 2 if bf16 else 0
        rows = ["bf16 weight copies (autocast's cache)"] if bf16 else []
        if ddp:
            rows.append("DDP's fp32 gradient buckets")
        parts.append(
            Part("transient weights", n if rows else 0, cache + (n * FP32_BYTES if ddp else 0), ", ".join(rows) or "-")
        )
    act_how = (
        "in-flight micro batches x layers x 2 B per token x hidden / tp (each layer's input), + 1 layer recomputed "
        "at 34 B"
        if checkpointing
        else "in-flight micro batches x layers x 34 B per token x hidden / tp"
    )
    parts.append(Part("activations", None, round(act), f"{act_how} (the planner's formula)"))
    vocab = f", vocabulary split over tp {layout.tp}" if layout.loss_parallel else ""
    parts.append(
        Part("logits", None, round(logits), f"one micro batch on the head's rank, bf16 + fp32 for the loss{vocab}")
    )
    parts.append(
        Part(
            "overhead",
            None,
            round(a.overhead_gib * GIB),
            "CUDA context, NCCL buffers, allocator (planner's assumption)",
        )
    )
    return parts


def _init_fake(rank: int, world_size: int) -> None:
    """Join torch's fake process group as `rank` of `world_size` (registered by importing fake_pg)."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)


def _measure(
    cfg: RunConfig,
    layout: ParallelConfig,
    world_size: int,
    rank: int,
    stages: list[tuple[range, bool, bool]],
    *,
    bf16: bool,
    wrap: bool,
) -> _Shards:
    """Build and parallelize `rank`'s stages on the meta device under the fake process group; read the
    local shard shapes. `wrap` False (a DDP layout) leaves the model whole: DDP replicates every parameter
    and cannot be constructed on meta tensors."""
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    from mltrain.model.transformer import Transformer
    from mltrain.train.distributed import DistInfo
    from mltrain.train.mesh import build_mesh
    from mltrain.train.parallel import parallelize_mesh
    from mltrain.train.stages import cut_to_stage

    assert cfg.model is not None
    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process; the dry run needs its own")
    if world_size > 1:
        _init_fake(rank, world_size)
    shapes: dict[str, tuple[int, ...]] = {}
    element_bytes: dict[str, int] = {}
    units: list[int] = []
    try:
        mesh = build_mesh(layout, "cpu")
        info = DistInfo(rank=rank, world_size=world_size, local_rank=0, device=torch.device("cpu"))
        for layers, first, last in stages:
            with torch.device("meta"):  # the layers past this stage's are never built (init costs on meta too)
                model = Transformer(cfg.model.model_copy(update={"n_layers": layers.stop}))
            cut_to_stage(model, layers, first=first, last=last)
            if wrap:
                parallelize_mesh(
                    model,
                    mesh,
                    info,
                    bf16=bf16,
                    compile_blocks=False,  # compiling changes no shape
                    activation_checkpointing=cfg.train.activation_checkpointing,
                    loss_parallel=layout.loss_parallel,
                )
            in_blocks = 0
            for block in model.layers:
                size = 0
                for p in block.parameters():
                    size += (p.to_local() if isinstance(p, DTensor) else p).numel()
                units.append(size)
                in_blocks += size
            root = 0
            for name, p in model.named_parameters():
                local = p.to_local() if isinstance(p, DTensor) else p
                key = name.replace("_checkpoint_wrapped_module.", "")
                shapes[key] = tuple(local.shape)
                element_bytes[key] = local.element_size()
                root += local.numel()
            units.append(root - in_blocks)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return _Shards(shapes=shapes, element_bytes=element_bytes, unit_elements=units)
