"""The planner's layout choice: torchtitan's published H100 layouts, memory by hand, the rules, the overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mltrain.cluster.catalog import get_instance
from mltrain.cluster.fleet import load_fleet
from mltrain.cluster.layout import (
    GIB,
    Bandwidth,
    Layout,
    LayoutAssumptions,
    choose_layout,
    layout_memory_gib,
    layout_model_from_config,
    layout_overrides,
)
from mltrain.cluster.planner import plan_fleet, shape_from_config
from mltrain.config import ModelConfig

H100 = get_instance("p5.48xlarge")  # 8 x H100, 79.6 GiB as the driver reports
H200 = get_instance("p5e.48xlarge")


def _model(preset: str):
    cfg = ModelConfig(preset=preset)
    return cfg, layout_model_from_config(cfg)


def _bw(inst=H100, mfu: float = 0.4) -> Bandwidth:
    return Bandwidth(peak_flops=inst.peak_flops, mfu=mfu, efa_gbytes_per_s=inst.network_gbps / 8 / inst.accelerators)


def _check_valid(lay: Layout, cfg: ModelConfig, world: int, seq: int, gpu_gib: float) -> None:
    """Every layout's invariants: the product is the world, tp divides the heads, the sequence splits, it fits."""
    assert lay.dp_replicate * lay.dp_shard * lay.tp * lay.cp * lay.pp == world
    assert cfg.n_heads % lay.tp == 0 and cfg.n_kv_heads % lay.tp == 0
    assert seq % (2 * lay.tp * lay.cp) == 0
    assert lay.tp <= 8  # never across nodes
    assert lay.memory_gib["total"] <= 0.9 * gpu_gib
    assert lay.reason


def test_presets_have_the_published_parameter_counts():
    # 70B: per layer 2*8192^2 + 2*8192*1024 (attention) + 3*8192*28672 (SwiGLU) + 2*8192 (norms) = 855,654,400;
    # 80 layers + final norm 8192 + untied embedding and head 2 * 128256 * 8192
    assert shape_from_config(ModelConfig(preset="llama3.1-70b")).params == 80 * 855_654_400 + 8192 + 2 * 1_050_673_152
    assert shape_from_config(ModelConfig(preset="llama3.1-70b")).params == pytest.approx(70.55e9, rel=1e-3)
    # 405B: per layer 2*16384^2 + 2*16384*1024 + 3*16384*53248 + 2*16384 = 3,187,703,808
    assert shape_from_config(ModelConfig(preset="llama3.1-405b")).params == (
        126 * 3_187_703_808 + 16384 + 2 * 128256 * 16384
    )
    assert shape_from_config(ModelConfig(preset="llama3.1-405b")).params == pytest.approx(405.85e9, rel=1e-3)
    cfg = ModelConfig(preset="llama3.1-405b")
    assert (cfg.head_dim, cfg.n_kv_heads, cfg.rope_theta) == (128, 8, 500000.0)


def test_memory_by_hand_for_torchtitans_70b_layout():
    """FSDP 32 x TP 8, micro batch 1, seq 8192, full checkpointing, written out part by part."""
    _, m = _model("llama3.1-70b")
    mem = layout_memory_gib(m, dp_shard=32, tp=8, cp=1, pp=1, micro_batch_size=1, seq_len=8192, checkpointing=True)
    params = 70_553_706_496
    assert mem["state"] == pytest.approx(params / 8 * 16 / 32 / GIB)  # 4.107 GiB
    assert mem["state"] == pytest.approx(4.1068, abs=1e-4)
    emb = 128256 * 8192  # the largest FSDP unit (> one block's 855,654,400)
    assert mem["working"] == pytest.approx(2 * emb / 8 * 6 / GIB)  # 1.468 GiB
    # kept layer inputs 80 x 2 B + one layer recomputed at 34 B, per token x hidden / tp
    assert mem["activations"] == pytest.approx(8192 * 8192 / 8 * (80 * 2 + 34) / GIB)  # 1.516 GiB
    assert mem["logits"] == pytest.approx(8192 * 128256 / 8 * 6 / GIB)  # 0.734 GiB
    assert mem["total"] == pytest.approx(4.1068 + 1.4678 + 1.5156 + 0.7339 + 6.0, abs=1e-3)


def test_memory_by_hand_for_torchtitans_405b_layout():
    """FSDP 8 x TP 8 x PP 8: the first stage holds ceil(126/8) = 16 blocks + the embedding, and 1F1B keeps
    8 micro batches of checkpointed inputs in flight."""
    _, m = _model("llama3.1-405b")
    mem = layout_memory_gib(m, dp_shard=8, tp=8, cp=1, pp=8, micro_batch_size=1, seq_len=8192, checkpointing=True)
    stage = 16 * 3_187_703_808 + 128256 * 16384 + 16384
    assert mem["state"] == pytest.approx(stage / 8 * 16 / 8 / GIB)  # 12.36 GiB
    assert mem["working"] == pytest.approx(2 * 3_187_703_808 / 8 * 6 / GIB)  # a block > the embedding: 4.45 GiB
    assert mem["activations"] == pytest.approx(8192 * 16384 / 8 * (16 * 8 * 2 + 34) / GIB)  # 4.53 GiB
    assert mem["total"] == pytest.approx(28.08, abs=0.01)
    assert mem["total"] < H100.gpu_memory_gib  # torchtitan's layout fits by our model too


def test_70b_on_256_h100s_fits_and_matches_torchtitan_at_its_batch():
    cfg, m = _model("llama3.1-70b")
    lay = choose_layout(m, nodes=32, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192)
    assert lay is not None
    _check_valid(lay, cfg, 256, 8192, H100.gpu_memory_gib)
    # micro batch 1: tp 4 fits without recompute (57 GiB), so checkpointing is not needed
    assert (lay.tp, lay.pp, lay.cp, lay.activation_checkpointing) == (4, 1, 1, "none")
    # 8 sequences per data-parallel rank: activations need tp 8 + full checkpointing = torchtitan's FSDP 32 x TP 8
    lay = choose_layout(
        m, nodes=32, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192, micro_batch_size=8,
        bandwidth=_bw(),
    )  # fmt: skip
    assert lay is not None
    _check_valid(lay, cfg, 256, 8192, H100.gpu_memory_gib)
    assert (lay.dp_replicate, lay.dp_shard, lay.tp, lay.pp, lay.activation_checkpointing) == (1, 32, 8, 1, "full")
    assert lay.short() == "fsdp32 tp8 ac" and lay.reason.startswith("tp 8 inside each node")


def test_405b_on_512_h100s_fits():
    cfg, m = _model("llama3.1-405b")
    lay = choose_layout(m, nodes=64, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192, bandwidth=_bw())
    assert lay is not None
    _check_valid(lay, cfg, 512, 8192, H100.gpu_memory_gib)
    # tp 8 + checkpointing fits without stages, and FSDP hides behind compute at EFA's 50 GB/s per GPU: no PP;
    # 64 nodes of data parallelism exceed the 32-node shard group, so HSDP 2 x 32
    assert (lay.dp_replicate, lay.dp_shard, lay.tp, lay.pp, lay.activation_checkpointing) == (2, 32, 8, 1, "full")
    assert "hsdp 2 x 32" in lay.reason
    # on 4 nodes nothing fits (16 B x 406B params alone is 189 GiB per GPU over 32 GPUs)
    assert choose_layout(m, nodes=4, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192) is None


def test_pipeline_stages_when_fsdp_traffic_would_be_exposed():
    """A slow network (5 GB/s per GPU) leaves FSDP's all-gathers exposed: stages cut each GPU's share."""
    cfg, m = _model("llama3.1-405b")
    slow = Bandwidth(peak_flops=H100.peak_flops, mfu=0.4, efa_gbytes_per_s=5.0)
    lay = choose_layout(m, nodes=64, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192, bandwidth=slow)
    assert lay is not None and lay.pp > 1 and lay.pp_microbatches == 2 * lay.pp
    _check_valid(lay, cfg, 512, 8192, H100.gpu_memory_gib)
    assert "FSDP traffic would exceed compute without stages" in lay.reason


def test_8b_on_64_gpus_is_fsdp_only():
    cfg, m = _model("llama3.1-8b")
    lay = choose_layout(m, nodes=8, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192, bandwidth=_bw())
    assert lay is not None
    _check_valid(lay, cfg, 64, 8192, H100.gpu_memory_gib)
    assert (lay.dp_replicate, lay.dp_shard, lay.tp, lay.cp, lay.pp) == (1, 64, 1, 1, 1)
    assert lay.activation_checkpointing == "none" and lay.reason.startswith("no tp: FSDP alone fits")


def test_long_context_picks_context_parallel():
    cfg, m = _model("llama3.1-8b")
    lay = choose_layout(m, nodes=8, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=131072)
    assert lay is not None and lay.cp > 1
    _check_valid(lay, cfg, 64, 131072, H100.gpu_memory_gib)
    assert lay.reason.startswith(f"cp {lay.cp}: seq 131072 >= 32k")
    # below 32k no CP
    lay = choose_layout(m, nodes=8, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=16384)
    assert lay is not None and lay.cp == 1


def test_asked_checkpointing_is_kept_and_hsdp_limit_is_a_knob():
    cfg, m = _model("llama3.1-8b")
    lay = choose_layout(
        m, nodes=8, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192, activation_checkpointing=True
    )
    assert lay is not None and lay.activation_checkpointing == "full" and "asked for" in lay.reason
    small_groups = LayoutAssumptions(max_shard_nodes=2)
    lay = choose_layout(m, nodes=8, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192, a=small_groups)
    assert lay is not None and (lay.dp_replicate, lay.dp_shard) == (4, 16)
    _check_valid(lay, cfg, 64, 8192, H100.gpu_memory_gib)


def test_tp_respects_the_heads():
    """qwen2.5-0.5b has 14 heads and 2 kv heads: tp is 1 or 2 whatever the pressure."""
    cfg, m = _model("qwen2.5-0.5b")
    for seq in (4096, 32768):
        lay = choose_layout(m, nodes=1, gpus_per_node=8, gpu_memory_gib=24.0, seq_len=seq)
        assert lay is None or lay.tp in (1, 2)
        if lay is not None:
            _check_valid(lay, cfg, 8, seq, 24.0)


def test_overrides_write_the_parallel_block():
    lay = Layout(dp_replicate=2, dp_shard=32, tp=8, cp=1, pp=1, activation_checkpointing="full", loss_parallel=True)
    sets = layout_overrides(lay.to_dict())
    assert sets == [
        "parallel.dp_replicate=2",
        "parallel.dp_shard=32",
        "parallel.tp=8",
        "parallel.cp=1",
        "parallel.pp=1",
        "parallel.pp_schedule=1F1B",
        "parallel.pp_microbatches=null",
        "parallel.loss_parallel=true",
        "train.activation_checkpointing=true",
    ]
    # what the rendered run config then holds (the overrides applied as `mltrain submit --set` does)
    from mltrain.config import apply_overrides

    rendered = apply_overrides({"train": {"parallel": "fsdp"}}, sets, "run.yaml")
    assert yaml.safe_load(yaml.safe_dump(rendered))["parallel"] == {
        "dp_replicate": 2,
        "dp_shard": 32,
        "tp": 8,
        "cp": 1,
        "pp": 1,
        "pp_schedule": "1F1B",
        "pp_microbatches": None,
        "loss_parallel": True,
    }
    assert "train.activation_checkpointing=true" in sets
    flat = Layout(dp_replicate=1, dp_shard=8, tp=1, cp=1, pp=1, activation_checkpointing="none")
    assert not any(x.startswith("train.") for x in layout_overrides(flat.to_dict())) and layout_overrides(None) == []


def test_pipeline_overrides_write_the_runs_micro_batch():
    """With pp the trainer splits train.micro_batch_size into pp_microbatches pieces: the planner's micro batch
    (what its memory model counts) is one piece, so the run's micro batch is it x pp_microbatches."""
    _, m = _model("llama3.1-405b")
    slow = Bandwidth(peak_flops=H100.peak_flops, mfu=0.4, efa_gbytes_per_s=5.0)
    lay = choose_layout(
        m, nodes=64, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192, micro_batch_size=2,
        bandwidth=slow,
    )  # fmt: skip
    assert lay is not None and lay.pp > 1 and lay.pp_microbatches == 2 * lay.pp
    assert lay.train_micro_batch_size == 2 * lay.pp_microbatches
    sets = layout_overrides(lay.to_dict())
    assert f"parallel.pp_microbatches={2 * lay.pp}" in sets and f"train.micro_batch_size={4 * lay.pp}" in sets
    assert f"micro batches of 2 sequences (train.micro_batch_size {4 * lay.pp};" in lay.reason
    # the memory is the planner's micro batch's, as before: one pipeline micro batch of 2 sequences
    assert lay.memory_gib == layout_memory_gib(
        m, dp_shard=lay.dp_shard, tp=8, cp=1, pp=lay.pp, micro_batch_size=2, seq_len=8192, checkpointing=True
    )
    hand = Layout(dp_replicate=1, dp_shard=8, tp=8, cp=1, pp=8, activation_checkpointing="full", pp_microbatches=16)
    with pytest.raises(ValueError, match="a pipeline layout needs train_micro_batch_size"):
        layout_overrides(hand.to_dict())
    # without pp the run's micro batch is the planner's: no override
    flat = choose_layout(
        m, nodes=64, gpus_per_node=8, gpu_memory_gib=H100.gpu_memory_gib, seq_len=8192, micro_batch_size=2
    )
    assert flat is not None and flat.pp == 1 and flat.train_micro_batch_size == 2
    assert not any(x.startswith("train.micro_batch_size") for x in layout_overrides(flat.to_dict()))


def test_plan_carries_each_models_layout(tmp_path: Path):
    from mltrain.cluster.fleet import Fleet

    fleet = Fleet.model_validate(
        {
            "cluster": {"instance_type": "p5e.48xlarge", "nodes": 16, "price_per_node_hour": 40.0},
            "models": [
                {
                    "name": "big",
                    "preset": "llama3.1-70b",
                    "tokens": "100B",
                    "mfu": 0.4,
                    "seq_len": 8192,
                    "fit": "layout",
                },
                {"name": "small", "preset": "llama3.1-8b", "tokens": "10B", "mfu": 0.4, "seq_len": 8192},
            ],
        }
    )
    plan = plan_fleet(fleet)
    big, small = plan.models
    assert big.layout is not None and small.layout is not None
    assert big.layout["tp"] > 1 and "inside each node" in (big.layout_reason or "")
    for p in plan.models:
        gpus = p.nodes * 8
        lay = p.layout
        assert lay is not None
        assert lay["dp_replicate"] * lay["dp_shard"] * lay["tp"] * lay["cp"] * lay["pp"] == gpus
    assert "layout" in plan.to_dict()["models"][0] and "layout_reason" in plan.to_dict()["models"][0]
    assert big.mem_gib_per_gpu == pytest.approx(big.layout["memory_gib"]["total"])
    # flat FSDP (the default fit) refuses the 70B at seq 8192 without checkpointing; the layout fit plans it
    from mltrain.errors import ClusterError

    data = fleet.model_dump()
    data["models"][0]["fit"] = "fsdp"
    with pytest.raises(ClusterError, match="model big: does not fit on a H200-141GB"):
        plan_fleet(Fleet.model_validate(data))
    data["models"][0].update(fit="layout", preset="llama3.1-405b")
    data["cluster"]["nodes"] = 2
    with pytest.raises(ClusterError, match=r"model big: no layout \(tp, cp, pp, activation checkpointing\) fits on 2"):
        plan_fleet(Fleet.model_validate(data))


def test_fleet_submit_passes_the_layout_as_overrides(tmp_path: Path, monkeypatch):
    """submit_run monkeypatched: the overrides fleet submit hands it are the planned layout's."""
    import mltrain.launch.slurm as slurm
    from mltrain.launch.fleet import fleet_submit_command, planned_overrides

    calls = []
    monkeypatch.setattr(slurm, "submit_run", lambda *a, **k: calls.append(k) or "job")
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"name": "big", "model": {"preset": "llama3.1-70b"}, "train": {"parallel": "fsdp"}}))
    script_run = tmp_path / "script.yaml"
    script_run.write_text(yaml.safe_dump({"name": "s", "script": {"path": "train.py"}}))
    fleet = tmp_path / "fleet.yaml"
    model = {"name": "big", "preset": "llama3.1-70b", "tokens": "100B", "mfu": 0.4, "seq_len": 8192}
    fleet.write_text(
        yaml.safe_dump(
            {
                "cluster": {"instance_type": "p5.48xlarge", "nodes": 32, "price_per_node_hour": 55.0},
                "models": [{**model, "fit": "layout", "run_config": "run.yaml"}],
            }
        )
    )
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        yaml.safe_dump(
            {"name": "t", "instance_type": "p5.48xlarge", "nodes": 32, "gpus_per_node": 8,
             "run_base_dir": str(tmp_path / "shared"), "slurm": {"partition": "gpu"}}
        )
    )  # fmt: skip
    from rich.console import Console

    c = Console(record=True, width=200, color_system=None)
    fleet_submit_command(fleet, cluster, console=c)
    plan = plan_fleet(load_fleet(fleet))
    want = layout_overrides(plan.models[0].layout)
    assert calls[0]["overrides"] == want and calls[0]["nodes"] == 32
    assert "layout fsdp" in c.export_text()
    assert planned_overrides(script_run, plan.models[0].layout) == []  # a script run parallelizes itself


# --------------------------------------------------------------------------- the trainer accepts what is planned

_SLOW = Bandwidth(peak_flops=H100.peak_flops, mfu=0.4, efa_gbytes_per_s=5.0)
_VERY_SLOW = Bandwidth(peak_flops=H100.peak_flops, mfu=0.4, efa_gbytes_per_s=0.5)

# (preset, nodes, GPU GiB, seq, planner micro batch, choose_layout's other arguments): the layouts the tests
# above plan, and a tied model on a network slow enough that stages would otherwise pay
PLANNED = {
    "70b-mb1": ("llama3.1-70b", 32, H100.gpu_memory_gib, 8192, 1, {}),
    "70b-mb8": ("llama3.1-70b", 32, H100.gpu_memory_gib, 8192, 8, {"bandwidth": _bw()}),
    "405b": ("llama3.1-405b", 64, H100.gpu_memory_gib, 8192, 1, {"bandwidth": _bw()}),
    "405b-slow-network": ("llama3.1-405b", 64, H100.gpu_memory_gib, 8192, 1, {"bandwidth": _SLOW}),
    "405b-slow-network-mb2": ("llama3.1-405b", 64, H100.gpu_memory_gib, 8192, 2, {"bandwidth": _SLOW}),
    "8b": ("llama3.1-8b", 8, H100.gpu_memory_gib, 8192, 1, {"bandwidth": _bw()}),
    "8b-long-context": ("llama3.1-8b", 8, H100.gpu_memory_gib, 131072, 1, {}),
    "8b-16k": ("llama3.1-8b", 8, H100.gpu_memory_gib, 16384, 1, {}),
    "8b-ac-asked": ("llama3.1-8b", 8, H100.gpu_memory_gib, 8192, 1, {"activation_checkpointing": True}),
    "8b-small-shard-groups": (
        "llama3.1-8b",
        8,
        H100.gpu_memory_gib,
        8192,
        1,
        {"a": LayoutAssumptions(max_shard_nodes=2)},
    ),
    "qwen-4k": ("qwen2.5-0.5b", 1, 24.0, 4096, 1, {}),
    "qwen-32k": ("qwen2.5-0.5b", 1, 24.0, 32768, 1, {}),
    "qwen-tied-very-slow-network": ("qwen2.5-0.5b", 4, 80.0, 4096, 1, {"bandwidth": _VERY_SLOW}),
    # no shard group within the node limit: replicas of unsharded tp ranks (DDP + TP) would be tried first
    "qwen-32k-no-shard-group-fits-the-limit": (
        "qwen2.5-0.5b",
        1,
        24.0,
        32768,
        1,
        {"a": LayoutAssumptions(max_shard_nodes=0)},
    ),
}


@pytest.mark.parametrize("case", sorted(PLANNED))
def test_the_trainer_accepts_every_planned_layout(tmp_path: Path, case: str):
    """The overrides fleet submit writes, applied to a run config of the planned model, load as the trainer
    loads them and resolve on the planned GPUs; the run's micro batch is what the planner sized."""
    from mltrain.config import load_run_config, resolve_parallel

    preset, nodes, gib, seq, micro, kwargs = PLANNED[case]
    cfg, m = _model(preset)
    lay = choose_layout(
        m, nodes=nodes, gpus_per_node=8, gpu_memory_gib=gib, seq_len=seq, micro_batch_size=micro, **kwargs
    )
    assert lay is not None
    run = tmp_path / "run.yaml"
    # the run config as a user writes it for this fleet model: the fleet's seq_len and micro batch
    run.write_text(
        yaml.safe_dump(
            {
                "name": "r",
                "model": {"preset": preset},
                "train": {"seq_len": seq, "micro_batch_size": micro, "parallel": "fsdp"},
            }
        )
    )
    rendered = load_run_config(run, layout_overrides(lay.to_dict()))
    assert rendered.parallel is not None
    assert rendered.parallel.model_dump() == lay.parallel_block()
    # the trainer's local batch: the planner's micro batch, split by the pipeline into pp_microbatches pieces
    p = rendered.parallel
    assert rendered.train.micro_batch_size == lay.train_micro_batch_size
    assert rendered.train.micro_batch_size // (p.microbatches() if p.pp > 1 else 1) == micro
    assert rendered.train.activation_checkpointing is (lay.activation_checkpointing == "full")
    resolved = resolve_parallel(rendered, nodes * 8, "cuda")
    assert resolved.model_dump() == lay.parallel_block()
