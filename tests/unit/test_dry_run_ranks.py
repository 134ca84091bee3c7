"""`mltrain train --dry-run-ranks N`: a layout's per-rank memory from a fake process group and meta
tensors, checked against shard shapes and bytes worked out by hand."""

from __future__ import annotations

import math
import subprocess
import time

import pytest
import torch.distributed as dist
from tests.helpers import mltrain_cmd, write_config

from mltrain.cluster.layout import GIB, layout_memory_gib, layout_model_from_config
from mltrain.config import ModelConfig, load_run_config
from mltrain.errors import ConfigError
from mltrain.train.dry_run import DryRun, dry_run_ranks, in_flight_microbatches

OVERHEAD = 6 * GIB  # the planner's CUDA context + NCCL + allocator allowance


def shard(n: int, k: int) -> int:
    """The rows of dim 0 that rank 0 holds when FSDP2 shards n rows over k ranks: torch.chunk's ceil
    division, which is also the padded size every rank allocates."""
    return math.ceil(n / k)


def numel(shapes) -> int:
    return sum(math.prod(s) for s in shapes)


# --------------------------------------------------------------------------- 405B on 512 ranks

D, LAYERS, HEADS, KV, HEAD_DIM, FFN, VOCAB = 16384, 126, 128, 8, 128, 53248, 128256
TP, DP, PP = 8, 8, 8
SEQ, MICRO, N_MB = 8192, 8, 8  # each rank's micro batch of 8 sequences runs as 8 pipeline micro batches of 1
# (1F1B's default: one per stage)


@pytest.fixture(scope="module")
def llama405(tmp_path_factory) -> DryRun:
    """torchtitan's published 405B layout, dp_shard 8 x tp 8 x pp 8, read from a run config as the trainer
    reads it."""
    path = write_config(
        tmp_path_factory.mktemp("dry") / "405b.yaml",
        {
            "name": "l405",
            "model": {"preset": "llama3.1-405b"},
            "train": {"seq_len": SEQ, "micro_batch_size": MICRO, "activation_checkpointing": True},
            "parallel": {"dp_shard": DP, "tp": TP, "pp": PP, "loss_parallel": True},
        },
    )
    start = time.perf_counter()
    result = dry_run_ranks(load_run_config(path), 512)
    result.seconds = time.perf_counter() - start
    return result


def layer_shapes() -> dict[str, tuple[int, ...]]:
    """One block's local shards: tensor parallel first (column-wise wq/wk/wv/w1/w3 split their output
    rows, row-wise wo/w2 their input columns, the norms stay whole under sequence parallel), then FSDP
    cuts dim 0 of that slice into dp_shard chunks."""
    return {
        "attention_norm.weight": (shard(D, DP),),
        "attention.wq.weight": (shard(HEADS * HEAD_DIM // TP, DP), D),
        "attention.wk.weight": (shard(KV * HEAD_DIM // TP, DP), D),
        "attention.wv.weight": (shard(KV * HEAD_DIM // TP, DP), D),
        "attention.wo.weight": (shard(D, DP), HEADS * HEAD_DIM // TP),
        "ffn_norm.weight": (shard(D, DP),),
        "feed_forward.w1.weight": (shard(FFN // TP, DP), D),
        "feed_forward.w2.weight": (shard(D, DP), FFN // TP),
        "feed_forward.w3.weight": (shard(FFN // TP, DP), D),
    }


def test_405b_on_512_ranks_matches_the_hand_calculation(llama405):
    d = llama405
    assert d.seconds < 60, d.seconds  # ~4 s of CPU here, the first time in a process (torch's lazy imports)
    assert not dist.is_initialized()  # the fake process group is gone
    assert (d.layout.dp_shard, d.layout.tp, d.layout.pp) == (DP, TP, PP)
    assert d.bf16 and d.device == "cuda"
    # 126 layers over 8 stages: the 6 extra layers go to the first 6 stages
    assert d.stage_layers == [16] * 6 + [15] * 2
    assert [k.pp_ranks for k in d.kinds] == [[r] for r in range(PP)]  # 1F1B: each stage holds its own activations

    per_layer = layer_shapes()
    assert per_layer["attention.wq.weight"] == (256, 16384) and per_layer["feed_forward.w2.weight"] == (2048, 6656)
    layer = numel(per_layer.values())
    assert layer == 49_811_456  # = 3,187,703,808 parameters per layer / 64 (everything divides evenly here)
    embedding = shard(VOCAB // TP, DP) * D  # vocab split over tp (16032 rows), then over dp_shard (2004 rows)
    head = embedding
    final_norm = shard(D, DP)

    starts = [0, 16, 32, 48, 64, 80, 96, 111]
    for pp_rank, kind in enumerate(d.kinds):
        n_layers = d.stage_layers[pp_rank]
        first, last = pp_rank == 0, pp_rank == PP - 1
        assert (kind.first, kind.last) == (first, last)
        assert kind.representative == pp_rank * 64  # every coordinate but pp is 0
        assert kind.layers == [range(starts[pp_rank], starts[pp_rank] + n_layers)]
        expect_shapes = {f"layers.{i}.{name}": shape for i in kind.layers[0] for name, shape in per_layer.items()}
        if first:
            expect_shapes["tok_embeddings.weight"] = (shard(VOCAB // TP, DP), D)
        if last:
            expect_shapes["norm.weight"] = (final_norm,)
            expect_shapes["output.weight"] = (shard(VOCAB // TP, DP), D)
        assert kind.shapes == expect_shapes

        n = n_layers * layer + (embedding if first else 0) + (head + final_norm if last else 0)
        tensors = 9 * n_layers + (1 if first else 0) + (2 if last else 0)
        assert kind.part("parameters").elements == n
        assert kind.part("parameters").bytes == 4 * n  # fp32 sharded master weights
        assert kind.part("gradients").bytes == 4 * n  # fp32 sharded gradients
        assert kind.part("optimizer").bytes == 2 * 4 * n + 4 * tensors  # exp_avg, exp_avg_sq + a step per tensor
        # two blocks gathered at a time: the tp slice of a block, bf16 weights + fp32 grads for the reduce-scatter
        block_gathered = layer * DP
        assert kind.part("FSDP gathered").bytes == 2 * block_gathered * (2 + 4)
        # the planner's formula: 34 B per token x hidden / tp per layer, checkpointed to 2 B + one layer
        in_flight = PP - pp_rank  # 1F1B
        per_layer_bytes = 1 * SEQ * D / TP
        assert kind.in_flight == in_flight
        assert kind.part("activations").bytes == round(per_layer_bytes * (n_layers * in_flight * 2 + 34))
        assert kind.part("logits").bytes == (round(SEQ * VOCAB / TP * 6) if last else 0)
        assert kind.part("overhead").bytes == OVERHEAD
        assert d.fits(kind)

    assert d.kinds[0].part("parameters").elements == 829_816_832
    assert d.kinds[-1].part("parameters").elements == 780_007_424
    assert round(d.kinds[0].total_bytes / GIB, 2) == 27.35


def test_405b_activations_agree_with_the_planner(llama405):
    """The first stage of 1F1B holds pp micro batches, which is what the planner assumes of every stage."""
    m = layout_model_from_config(ModelConfig(preset="llama3.1-405b"))
    planner = layout_memory_gib(m, dp_shard=DP, tp=TP, cp=1, pp=PP, micro_batch_size=1, seq_len=SEQ, checkpointing=True)
    first = llama405.kinds[0]
    assert first.part("activations").bytes / GIB == pytest.approx(planner["activations"], rel=1e-12)
    assert llama405.kinds[-1].part("logits").bytes / GIB == pytest.approx(planner["logits"], rel=1e-12)


def test_405b_total_is_the_planners_but_for_where_the_logits_are(llama405):
    """The planner sizes one worst stage: the first stage's state, working set and in-flight activations
    plus the last stage's logits. The dry run puts the logits on the last stage alone, so its first stage is
    the planner's total less the logits. The rest differs by 1.2 MB: the planner splits every parameter
    over tp, but tensor parallel keeps each block's two norms whole on every tp rank (16 layers x 2 x 16384
    x (7/8 of them) x 16 B of state + 2 gathered blocks' worth x 6 B; the optimizer's step tensors and the
    final norm the planner counts on the first stage are bytes)."""
    m = layout_model_from_config(ModelConfig(preset="llama3.1-405b"))
    planner = layout_memory_gib(m, dp_shard=DP, tp=TP, cp=1, pp=PP, micro_batch_size=1, seq_len=SEQ, checkpointing=True)
    assert round(planner["total"], 2) == 28.08
    first, last = llama405.kinds[0], llama405.kinds[-1]
    assert first.total_bytes == max(k.total_bytes for k in llama405.kinds)
    norms = 16 * 2 * D * (TP - 1) // TP // DP * 16 + 2 * 2 * D * (TP - 1) // TP * 6  # bytes the planner leaves out
    assert first.total_bytes - norms == pytest.approx((planner["total"] - planner["logits"]) * GIB, abs=8 * 1024)
    assert last.part("logits").bytes / GIB == pytest.approx(planner["logits"], rel=1e-12)


def test_the_planners_pipeline_layout_renders_a_run_the_dry_run_sizes_alike(tmp_path):
    """The planner's 405B layout on a slow network (pipeline stages), written into a run config by the
    overrides fleet submit uses: the trainer's config loads, the pipeline splits the run's micro batch into
    the planner's micro batches, and the dry run's worst rank is the planner's total less the logits."""
    from mltrain.cluster.catalog import get_instance
    from mltrain.cluster.layout import Bandwidth, choose_layout, layout_overrides

    h100 = get_instance("p5.48xlarge")
    m = layout_model_from_config(ModelConfig(preset="llama3.1-405b"))
    slow = Bandwidth(peak_flops=h100.peak_flops, mfu=0.4, efa_gbytes_per_s=5.0)
    lay = choose_layout(
        m, nodes=64, gpus_per_node=8, gpu_memory_gib=h100.gpu_memory_gib, seq_len=SEQ, micro_batch_size=1,
        bandwidth=slow,
    )  # fmt: skip
    assert lay is not None and lay.pp == 4 and lay.pp_microbatches == 8
    run = write_config(
        tmp_path / "run.yaml",
        {"name": "p", "model": {"preset": "llama3.1-405b"}, "train": {"seq_len": SEQ, "micro_batch_size": 1}},
    )
    cfg = load_run_config(run, layout_overrides(lay.to_dict()))
    assert cfg.train.micro_batch_size == 8 and cfg.train.activation_checkpointing is True
    d = dry_run_ranks(cfg, 512)
    assert (d.n_microbatches, d.micro_batch_size) == (8, 1)  # 8 pipeline micro batches of the planner's 1
    assert d.stage_layers == [32, 32, 31, 31]
    worst = max(d.kinds, key=lambda k: k.total_bytes)
    assert worst is d.kinds[0] and worst.in_flight == 4
    mem = lay.memory_gib
    assert worst.part("activations").bytes / GIB == pytest.approx(mem["activations"], rel=1e-12)
    assert d.kinds[-1].part("logits").bytes / GIB == pytest.approx(mem["logits"], rel=1e-12)
    # within the norms tensor parallel keeps whole (previous test): 32 layers over dp_shard 16 here, 1.3 MB
    assert worst.total_bytes / GIB == pytest.approx(mem["total"] - mem["logits"], abs=0.002)


# --------------------------------------------------------------------------- a small layout, exactly

SMALL = {
    "name": "small",
    # head_dim 6, kv rows 12, ffn 100: the tp slices do not divide by dp_shard 4, so FSDP pads
    "model": {
        "vocab_size": 1000,
        "hidden_size": 36,
        "n_layers": 3,
        "n_heads": 6,
        "n_kv_heads": 2,
        "ffn_hidden_size": 100,
        "max_seq_len": 64,
    },
    "train": {"seq_len": 32, "micro_batch_size": 2},
    "parallel": {"dp_shard": 4, "tp": 2},
}


def test_small_layout_every_figure(tmp_path):
    path = write_config(tmp_path / "small.yaml", SMALL)
    d = dry_run_ranks(load_run_config(path), 8)
    assert not dist.is_initialized()
    (kind,) = d.kinds
    assert kind.ranks_words() == "ranks 0-7" and kind.column_words() == "every rank"
    layer = {
        "attention_norm.weight": (9,),  # 36 over 4
        "attention.wq.weight": (5, 36),  # 36 rows / tp 2 = 18, over 4 = 5 (padded to 20)
        "attention.wk.weight": (2, 36),  # 12 / 2 = 6, over 4 = 2 (padded to 8)
        "attention.wv.weight": (2, 36),
        "attention.wo.weight": (9, 18),  # row-wise: 36 x 18, over 4 = 9
        "ffn_norm.weight": (9,),
        "feed_forward.w1.weight": (13, 36),  # 100 / 2 = 50, over 4 = 13 (padded to 52)
        "feed_forward.w2.weight": (9, 50),
        "feed_forward.w3.weight": (13, 36),
    }
    expect = {f"layers.{i}.{k}": v for i in range(3) for k, v in layer.items()}
    expect |= {"tok_embeddings.weight": (125, 36), "norm.weight": (9,), "output.weight": (125, 36)}
    assert kind.shapes == expect
    n = 3 * 1890 + 4500 + 9 + 4500
    assert numel(expect.values()) == n == 14_679
    assert kind.part("parameters").bytes == 4 * n
    assert kind.part("gradients").bytes == 4 * n
    assert kind.part("optimizer").bytes == 8 * n + 4 * 30
    # the root unit (embedding, norm, head: 9009 local elements) is larger than a block (1890)
    assert kind.part("FSDP gathered").bytes == 2 * (9009 * 4) * 6
    tokens = 2 * 32
    assert kind.part("activations").bytes == tokens * 36 / 2 * 3 * 34
    assert kind.part("logits").bytes == tokens * 1000 * 6  # no loss_parallel: the head gathers the vocabulary
    assert kind.total_bytes == 4 * n * 4 + 4 * 30 + 2 * 9009 * 4 * 6 + 117_504 + 384_000 + OVERHEAD

    # with pp 1 the dry run's activations and logits are the planner's
    cfg = load_run_config(path)
    assert cfg.model is not None
    planner = layout_memory_gib(
        layout_model_from_config(cfg.model),
        dp_shard=4,
        tp=2,
        cp=1,
        pp=1,
        micro_batch_size=2,
        seq_len=32,
        checkpointing=False,
    )
    assert kind.part("activations").bytes / GIB == pytest.approx(planner["activations"], rel=1e-12)


def test_ddp_keeps_whole_tensors_and_its_buckets(tmp_path):
    path = write_config(tmp_path / "ddp.yaml", {**SMALL, "parallel": {"dp_replicate": 4, "dp_shard": 1}})
    (kind,) = dry_run_ranks(load_run_config(path), 4).kinds
    n = 3 * (2 * 36 + 36 * 36 * 2 + 12 * 36 * 2 + 3 * 100 * 36) + 1000 * 36 * 2 + 36
    assert kind.part("parameters").elements == n
    assert kind.shapes["layers.0.attention.wk.weight"] == (12, 36)
    assert kind.part("transient weights").bytes == n * 2 + n * 4  # autocast's bf16 copies + DDP's buckets


def test_interleaved_stages_and_in_flight_micro_batches(tmp_path):
    data = {
        **SMALL,
        "model": {**SMALL["model"], "n_layers": 8},
        "train": {"seq_len": 32, "micro_batch_size": 4},
        "parallel": {"dp_shard": 2, "pp": 2, "pp_schedule": "Interleaved1F1B", "pp_microbatches": 4},
    }
    path = write_config(tmp_path / "pp.yaml", data)
    d = dry_run_ranks(load_run_config(path), 4)
    assert [k.stages for k in d.kinds] == [[0, 2], [1, 3]]
    assert [k.layers for k in d.kinds] == [[range(0, 2), range(4, 6)], [range(2, 4), range(6, 8)]]
    assert (d.kinds[0].first, d.kinds[0].last, d.kinds[1].first, d.kinds[1].last) == (True, False, False, True)
    assert d.micro_batch_size == 1 and d.n_microbatches == 4
    # torch's interleaved warmup: (v - 1) x 2 per round + 2 x (pp - 1 - rank), then one more forward
    assert [k.in_flight for k in d.kinds] == [5, 3]
    assert in_flight_microbatches("1F1B", 0, 4, 8) == 4 and in_flight_microbatches("1F1B", 3, 4, 8) == 1
    assert in_flight_microbatches("1F1B", 0, 4, 2) == 2
    assert in_flight_microbatches("GPipe", 3, 4, 8) == 8


def test_pp_ranks_with_the_same_figures_are_one_kind(tmp_path):
    """GPipe holds every micro batch on every stage: the middle stages of equal size are one column."""
    data = {
        **SMALL,
        "model": {**SMALL["model"], "n_layers": 8},
        "train": {"seq_len": 32, "micro_batch_size": 4},
        "parallel": {"pp": 4, "pp_schedule": "GPipe"},
    }
    d = dry_run_ranks(load_run_config(write_config(tmp_path / "gpipe.yaml", data)), 4)
    assert [k.pp_ranks for k in d.kinds] == [[0], [1, 2], [3]]
    middle = d.kinds[1]
    assert middle.column_words() == "pp 1-2" and middle.ranks_words() == "pp ranks 1-2 (ranks 1-2)"
    assert middle.holds_words() == "2 layers each"
    assert d.kinds[0].holds_words() == "stage 0: layers 0-1 + embedding"
    assert [k.in_flight for k in d.kinds] == [4, 4, 4]


def test_the_shorthand_none_is_one_process(tmp_path):
    data = {key: value for key, value in SMALL.items() if key != "parallel"}
    cfg = load_run_config(write_config(tmp_path / "none.yaml", data))
    assert dry_run_ranks(cfg, 1).kinds[0].part("parameters").elements == 115_020
    with pytest.raises(ConfigError, match="^train.parallel: none trains one process, not 4"):
        dry_run_ranks(cfg, 4)
    fsdp = dry_run_ranks(cfg.model_copy(update={"train": cfg.train.model_copy(update={"parallel": "fsdp"})}), 4)
    assert fsdp.kinds[0].shapes["layers.0.attention.wk.weight"] == (3, 36)


@pytest.mark.parametrize(
    "parallel, train, world, expect",
    [
        ({"dp_shard": 4, "tp": 2}, {}, 16, "parallel: dp_replicate 1 x dp_shard 4 x tp 2 x cp 1 x pp 1 = 8, but"),
        ({"cp": 2, "dp_shard": 1}, {}, 4, "parallel: dp_replicate 1 x dp_shard 1 x tp 1 x cp 2 x pp 1 = 2, but"),
    ],
)
def test_layouts_the_run_could_not_start_with(tmp_path, parallel, train, world, expect):
    data = {**SMALL, "parallel": parallel, "train": {**SMALL["train"], **train}}
    path = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError, match="^" + expect.replace("(", r"\(").replace(")", r"\)")):
        dry_run_ranks(load_run_config(path), world)
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    "parallel, train, expect",
    [
        ({"pp": 4}, {}, "parallel.pp 4 with 1F1B makes 4 pipeline stages, but model.n_layers is 3"),
        ({"pp": 2, "pp_microbatches": 4}, {"micro_batch_size": 2}, "train.micro_batch_size 2 is not divisible"),
    ],
)
def test_pipeline_layouts_the_run_could_not_start_with(tmp_path, parallel, train, expect):
    """The trainer's own config validation refuses these pipelines as the run config loads."""
    data = {**SMALL, "parallel": parallel, "train": {**SMALL["train"], **train}}
    path = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(
        ConfigError, match="^" + f"{path}: (top level): {expect}".replace("(", r"\(").replace(")", r"\)")
    ):
        load_run_config(path)
    assert not dist.is_initialized()


def test_the_dry_run_splits_the_batch_as_the_trainer_does(tmp_path, capsys):
    """Without pp_microbatches the trainer runs one micro batch per stage: Interleaved1F1B on pp 2 has 4
    stages, so 4 micro batches of 1 sequence, and the in-flight counts are torch's for 4 micro batches."""
    from mltrain.cli.train import print_dry_run

    data = {
        **SMALL,
        "model": {**SMALL["model"], "n_layers": 8},
        "train": {"seq_len": 32, "micro_batch_size": 4},
        "parallel": {"dp_shard": 2, "pp": 2, "pp_schedule": "Interleaved1F1B"},
    }
    path = write_config(tmp_path / "pp.yaml", data)
    cfg = load_run_config(path)
    assert cfg.parallel is not None and cfg.parallel.microbatches() == 4
    d = dry_run_ranks(cfg, 4)
    assert (d.n_microbatches, d.micro_batch_size) == (4, 1)
    # the same figures as with pp_microbatches: 4 given (test_interleaved_stages_and_in_flight_micro_batches)
    assert [k.in_flight for k in d.kinds] == [5, 3]
    # 5 chunk forwards, each through one stage of 2 layers, of 1 x 32 tokens at 34 B x hidden 36
    assert d.kinds[0].part("activations").bytes == 1 * 32 * 36 * 2 * 5 * 34
    print_dry_run(d, path)
    out = capsys.readouterr().out
    assert "Interleaved1F1B with 4 micro batches of 1 sequence, layers per stage 2/2/2/2" in out
    assert "5 micro batches of 1 x 32 tokens in flight" in out
    # 1F1B's default is one per stage too: pp 2 splits the 4 sequences into 2 micro batches of 2
    d = dry_run_ranks(load_run_config(path, ["parallel.pp_schedule=1F1B"]), 4)
    assert (d.n_microbatches, d.micro_batch_size) == (2, 2) and [k.in_flight for k in d.kinds] == [2, 1]


# --------------------------------------------------------------------------- the command


def test_cli_prints_the_table_and_exits_0(tmp_path):
    path = write_config(tmp_path / "small.yaml", SMALL)
    r = subprocess.run(
        mltrain_cmd("train", str(path), "--dry-run-ranks", "8", "--set", "train.activation_checkpointing=true"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert (
        f"dry run of {path} on 8 ranks: dp_shard 4 x tp 2; bf16 compute on cuda, activation checkpointing full" in out
    )
    for row in ("parameters #", "parameters", "gradients", "optimizer", "FSDP gathered", "activations", "total"):
        assert f" {row} " in out, row
    assert "14,679" in out and "of 80 GiB" in out and "fits" in out
    assert "A fake run cannot check:" in out and "NCCL / EFA" in out
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory


def test_cli_bad_layout_is_one_line_exit_2(tmp_path):
    path = write_config(tmp_path / "small.yaml", SMALL)
    r = subprocess.run(
        mltrain_cmd("train", str(path), "--dry-run-ranks", "16"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        f"error: {path}: --dry-run-ranks 16: parallel: dp_replicate 1 x dp_shard 4 x tp 2 x cp 1 x pp 1 = 8, but "
        "the world size is 16"
    ]


def test_selective_checkpointing_is_counted_as_the_memory_model_counts_it(tmp_path):
    """The planner's memory model leaves out what selective checkpointing saves, so selective costs what no
    checkpointing costs; only full checkpointing keeps just each layer's input. The header names the mode."""

    def kind(ac):
        data = {**SMALL, "train": {**SMALL["train"], "activation_checkpointing": ac}}
        d = dry_run_ranks(load_run_config(write_config(tmp_path / "ac.yaml", data)), 8)
        return d, d.kinds[0].part("activations").bytes

    (none, act_none), (sel, act_sel), (full, act_full) = kind(False), kind("selective"), kind(True)
    assert act_sel == act_none > act_full
    assert (none.activation_checkpointing, sel.activation_checkpointing, full.activation_checkpointing) == (
        "none",
        "selective",
        "full",
    )
