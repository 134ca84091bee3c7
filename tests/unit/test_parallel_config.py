"""The `parallel:` block: every refusal is one line naming the file and key, the shorthand
`train.parallel` maps onto it, dp_shard -1 is inferred, and the mesh has only the axes above 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mltrain.config import (
    ParallelConfig,
    check_nproc,
    layout_warning,
    load_run_config,
    parallel_note,
    resolve_parallel,
)
from mltrain.errors import ConfigError
from mltrain.train.mesh import dp_coordinate

BASE = {"name": "x", "model": {"preset": "tiny", "tie_embeddings": False}, "train": {"seq_len": 64}}


def load(tmp_path: Path, parallel: dict | None = None, **sections: dict):
    data = {**BASE, **({"parallel": parallel} if parallel is not None else {})}
    for key, extra in sections.items():
        data[key] = {**data.get(key, {}), **extra}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_run_config(path), path


@pytest.mark.parametrize(
    "parallel, sections, expect",
    [
        ({"tp": 4}, {}, "(top level): parallel.tp 4: model.n_heads 6 is not divisible by it"),
        ({"tp": 3}, {}, "(top level): parallel.tp 3: model.n_kv_heads 2 is not divisible by it"),
        (
            {"tp": 2},
            {"train": {"seq_len": 66}},
            "(top level): train.seq_len 66 is not divisible by 2 x parallel.tp 2 x parallel.cp 1 = 4 "
            "(sequence parallel splits it across ranks)",
        ),
        (
            {"pp": 2},
            {"model": {"tie_embeddings": True}},
            "(top level): parallel.pp 2: model.tie_embeddings must be false under pipeline parallel (the embedding "
            "is on the first stage, the head on the last: one tied matrix cannot be on both)",
        ),
        (
            {"pp": 3, "pp_schedule": "Interleaved1F1B"},
            {},
            "(top level): parallel.pp 3 with Interleaved1F1B makes 6 pipeline stages, but model.n_layers is 4: "
            "each stage needs at least one layer",
        ),
        (
            {"pp": 2},
            {"train": {"loss_chunk_tokens": 64}},
            "(top level): parallel.pp 2: train.loss_chunk_tokens must be 0 under pipeline parallel",
        ),
        (
            {"pp": 2},
            {"train": {"micro_batch_size": 3}},
            "(top level): train.micro_batch_size 3 is not divisible by parallel.pp_microbatches 2 (the default: 2 "
            "stages): each pipeline micro batch takes an equal share of the local batch",
        ),
        (
            {"pp": 2, "pp_microbatches": 4},
            {"train": {"micro_batch_size": 6}},
            "(top level): train.micro_batch_size 6 is not divisible by parallel.pp_microbatches 4: each pipeline "
            "micro batch takes an equal share of the local batch",
        ),
        (
            {"pp": 4, "pp_microbatches": 2},
            {"train": {"micro_batch_size": 8}},
            "(top level): parallel.pp_microbatches 2: 1F1B needs at least one micro batch per stage (4)",
        ),
        (
            {"pp": 2, "pp_schedule": "Interleaved1F1B", "pp_microbatches": 5},
            {"train": {"micro_batch_size": 10}},
            "(top level): parallel.pp_microbatches 5: Interleaved1F1B runs them in 2 equal rounds (5 // pp 2); "
            "use a multiple of pp or fewer than 4",
        ),
        ({"dp_shard": 0}, {}, "parallel: dp_shard 0: give a degree >= 1, or -1 to infer it from the world size"),
        (
            {"loss_parallel": True},
            {},
            "(top level): parallel.loss_parallel needs parallel.tp > 1 (it shards the logits over tp)",
        ),
        (
            {"dp_replicate": 2, "dp_shard": 1, "tp": 2},
            {},
            "(top level): parallel.dp_replicate 2 with tp 2 and dp_shard 1: DDP does not compose with tensor "
            "parallel; use dp_shard instead (HSDP when dp_replicate > 1 too)",
        ),
        (
            {"tp": 2},
            {"train": {"loss_chunk_tokens": 64}},
            "(top level): parallel.tp 2: train.loss_chunk_tokens must be 0 under tensor parallel",
        ),
        ({"tq": 2}, {}, "parallel.tq: unknown key (typo?)"),
    ],
)
def test_refusals_are_one_line_naming_file_and_key(tmp_path, parallel, sections, expect):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, parallel, **sections)
    assert str(e.value) == f"{tmp_path / 'run.yaml'}: {expect}"


def test_world_size_must_be_the_product(tmp_path):
    cfg, path = load(tmp_path, {"tp": 2, "dp_shard": 3})
    check_nproc(cfg, 6, path)
    with pytest.raises(ConfigError) as e:
        check_nproc(cfg, 4, path)
    assert str(e.value) == (
        f"{path}: --nproc 4: parallel: dp_replicate 1 x dp_shard 3 x tp 2 x cp 1 x pp 1 = 6, but the world size is 4"
    )
    cfg, _ = load(tmp_path, {"tp": 2, "dp_replicate": 3})
    with pytest.raises(ConfigError) as e:
        resolve_parallel(cfg, 8)
    assert str(e.value) == (
        "parallel: dp_replicate 3 x tp 2 x cp 1 x pp 1 = 6 does not divide the world size 8, "
        "so dp_shard: -1 cannot be inferred"
    )
    assert resolve_parallel(cfg, 12).dp_shard == 2


def test_pipeline_layouts_that_run(tmp_path):
    """Stages = pp x the schedule's stages per rank; micro batches default to one per stage; GPipe takes
    fewer micro batches than stages, Interleaved1F1B any count its rounds divide."""
    cfg, _ = load(tmp_path, {"pp": 2}, train={"micro_batch_size": 4})
    p = resolve_parallel(cfg, 4)
    assert (p.pp, p.dp_shard, p.n_stages(), p.microbatches()) == (2, 2, 2, 2)
    cfg, _ = load(tmp_path, {"pp": 2, "tp": 2, "pp_schedule": "Interleaved1F1B"}, train={"micro_batch_size": 8})
    assert (cfg.parallel.n_stages(), cfg.parallel.microbatches()) == (4, 4)
    cfg, _ = load(tmp_path, {"pp": 4, "pp_schedule": "GPipe", "pp_microbatches": 2}, train={"micro_batch_size": 2})
    assert cfg.parallel.microbatches() == 2
    cfg, _ = load(
        tmp_path,
        {"pp": 4, "pp_schedule": "Interleaved1F1B", "pp_microbatches": 10},
        train={"micro_batch_size": 10},
        model={"n_layers": 8},
    )
    assert cfg.parallel.n_stages() == 8
    assert ParallelConfig().n_stages() == 1 and ParallelConfig().microbatches() == 1


def test_pipeline_with_ddp_alone_is_refused_once_the_world_is_known(tmp_path):
    """dp_replicate without dp_shard is DDP; torch's stages cannot drive it (given or inferred dp_shard 1)."""
    want = (
        "parallel.dp_replicate 2 with pp 2 and dp_shard 1: DDP does not compose with pipeline parallel; use "
        "dp_shard instead (HSDP when dp_replicate > 1 too)"
    )
    for parallel in ({"pp": 2, "dp_replicate": 2, "dp_shard": 1}, {"pp": 2, "dp_replicate": 2}):
        cfg, path = load(tmp_path, parallel, train={"micro_batch_size": 4})
        with pytest.raises(ConfigError) as e:
            resolve_parallel(cfg, 4)
        assert str(e.value) == want
        assert layout_warning(cfg, 4) == want
    cfg, _ = load(tmp_path, {"pp": 2, "dp_replicate": 2}, train={"micro_batch_size": 4})
    assert resolve_parallel(cfg, 8).dp_shard == 2  # HSDP per stage
    assert layout_warning(cfg, 8) is None


def test_context_parallel_is_refused_on_cpu_and_inside_pipelines(tmp_path):
    cfg, _ = load(tmp_path, {"tp": 2, "cp": 2})
    with pytest.raises(ConfigError) as e:
        resolve_parallel(cfg, 4, "cpu")
    assert str(e.value) == (
        "parallel.cp 2: context parallel cannot run on CPU (torch's context parallel needs the CUDA flash / "
        "efficient / cuDNN attention kernels); use cp: 1"
    )
    assert (resolve_parallel(cfg, 8, "cuda").dp_shard, resolve_parallel(cfg, 8, "cuda").cp) == (2, 2)
    cfg, _ = load(tmp_path, {"cp": 2, "pp": 2})
    with pytest.raises(ConfigError) as e:
        resolve_parallel(cfg, 4, "cuda")
    assert str(e.value) == (
        "parallel.cp 2 with pp 2: context parallel inside pipeline stages is not supported; use one of them"
    )


def test_shorthand_maps_onto_the_block(tmp_path):
    for mode, want in (("ddp", (4, 1)), ("fsdp", (1, 4)), ("none", (1, 1))):
        cfg, _ = load(tmp_path, None, train={"parallel": mode})
        p = resolve_parallel(cfg, 4)
        assert (p.dp_replicate, p.dp_shard, p.tp) == (*want, 1)
        assert parallel_note(cfg) is None
    cfg, _ = load(tmp_path, {"tp": 2}, train={"parallel": "fsdp"})
    assert parallel_note(cfg) == (
        "train.parallel: fsdp is ignored: the parallel: block sets the layout "
        "(ddp = dp_replicate over the world, fsdp = dp_shard over the world)"
    )
    check_nproc(cfg, 4)  # the block decides: 2 x tp 2 is fine without train.parallel


def test_tp_ranks_of_one_dp_group_share_a_data_rank():
    p = ParallelConfig(dp_replicate=2, dp_shard=2, tp=2)
    assert [dp_coordinate(p, r) for r in range(8)] == [(i // 2, 4) for i in range(8)]
    assert [dp_coordinate(ParallelConfig(dp_shard=1, tp=4), r)[0] for r in range(4)] == [0, 0, 0, 0]


def test_mesh_names_only_the_axes_above_one():
    """On torch's fake process group (no peers): degree-1 axes are left out, HSDP's dp mesh is 2-D."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from mltrain.train.mesh import build_mesh, dp_mesh, tp_mesh

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=8)
    try:
        mesh = build_mesh(ParallelConfig(dp_replicate=2, dp_shard=2, tp=2), "cpu")
        assert mesh.mesh_dim_names == ("dp_replicate", "dp_shard", "tp")
        assert dp_mesh(mesh).mesh_dim_names == ("dp_replicate", "dp_shard")
        assert dp_mesh(mesh).size() == 4 and tp_mesh(mesh).size() == 2
        tp_only = build_mesh(ParallelConfig(dp_shard=1, tp=8), "cpu")
        assert tp_only.mesh_dim_names == ("tp",) and dp_mesh(tp_only) is None
        assert build_mesh(ParallelConfig(dp_shard=1), "cpu") is None
    finally:
        dist.destroy_process_group()


def test_tensor_parallel_with_ddp_alone_is_refused_when_dp_shard_is_inferred(tmp_path):
    """The config's own check sees only a given dp_shard 1; an inferred one (dp_replicate x tp = the world)
    is DDP under tensor parallel too, refused by the same rule once the world is known."""
    cfg, _ = load(tmp_path, {"dp_replicate": 2, "tp": 2})
    want = (
        "parallel.dp_replicate 2 with tp 2 and dp_shard 1: DDP does not compose with tensor parallel; use "
        "dp_shard instead (HSDP when dp_replicate > 1 too)"
    )
    with pytest.raises(ConfigError) as e:
        resolve_parallel(cfg, 4)
    assert str(e.value) == want
    assert layout_warning(cfg, 4) == want
    assert resolve_parallel(cfg, 8).dp_shard == 2  # sharded: HSDP x tp is fine
