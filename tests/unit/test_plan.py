"""Planner: the seed case, memory-fit edges, FLOPs by hand, the split is optimal, deadlines, bad input."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import yaml

from mltrain.cluster.catalog import get_instance
from mltrain.cluster.fleet import Fleet, load_fleet, parse_count
from mltrain.cluster.planner import (
    GIB,
    ModelShape,
    allocate_min_makespan,
    flops_per_token,
    memory_per_gpu_gib,
    min_nodes_to_fit,
    model_shape,
    plan_fleet,
    read_bench_mfu,
)
from mltrain.errors import ClusterError, ConfigError

ROOT = Path(__file__).resolve().parents[2]
SEVEN = ROOT / "configs" / "fleets" / "seven-models.yaml"


def _fleet(**over) -> dict:
    base = {
        "cluster": {"instance_type": "p5e.48xlarge", "nodes": 80, "region": "ap-southeast-3"},
        "models": [{"name": "a", "preset": "llama3.1-8b", "tokens": "100B", "mfu": 0.4}],
    }
    base.update(over)
    return base


def _plan(data: dict):
    return plan_fleet(Fleet.model_validate(data))


# --------------------------------------------------------------------------- the seed case


def test_seed_case_is_sane_and_reproducible():
    fleet = load_fleet(SEVEN)
    plan = plan_fleet(fleet)
    again = plan_fleet(load_fleet(SEVEN))
    assert plan.to_dict() == again.to_dict()  # pure: same file, same numbers

    assert (plan.nodes, plan.gpus_per_node, plan.instance_type) == (80, 8, "p5e.48xlarge")
    assert plan.price_per_node_hour * plan.nodes == pytest.approx(2768.0)
    assert [m.seed_nodes for m in plan.models] == [11, 11, 11, 11, 11, 11, 14]
    # the seed split: every model 1-2 weeks (the seed's own claim, reproduced by the example numbers)
    assert all(7 <= m.seed_days <= 14 for m in plan.models)
    assert plan.seed_totals.makespan_days == pytest.approx(max(m.seed_days for m in plan.models))
    # the planned split uses every node, meets the 14-day deadline and is no worse than the seed's
    assert sum(m.nodes for m in plan.models) == 80
    assert all(m.nodes >= 4 for m in plan.models)  # constraints.min_nodes_per_model
    assert plan.totals.makespan_days <= 14
    assert plan.totals.makespan_days < plan.seed_totals.makespan_days
    # linear scaling: per-model node-hours do not depend on the split, only the idle tail does
    assert plan.totals.busy_node_hours == pytest.approx(plan.seed_totals.busy_node_hours)
    assert plan.totals.idle_node_hours < plan.seed_totals.idle_node_hours
    t = plan.totals
    assert t.cluster_node_hours == pytest.approx(80 * t.makespan_days * 24)
    assert t.cluster_dollars == pytest.approx(t.cluster_node_hours * 34.60)
    assert t.busy_node_hours + t.idle_node_hours == pytest.approx(t.cluster_node_hours)
    for m in plan.models:
        assert m.node_hours == pytest.approx(m.nodes * m.days * 24)
        assert m.dollars == pytest.approx(m.node_hours * 34.60)
        assert m.min_nodes_fit == 1  # <= 8B on 8 x H200 fits on one node
        assert m.mem_gib_per_gpu < get_instance("p5e.48xlarge").gpu_memory_gib


def test_seed_case_days_by_hand():
    """Llama 3.1 8B, 900B tokens, seq 4096, MFU 0.40 on 14 p5e nodes, computed without the planner."""
    n_matmul = 8_030_261_248 - 128256 * 4096  # all params but the embedding lookup (head is untied)
    per_tok = 6 * n_matmul + 12 * 32 * 4096 * 4096
    days = 900e9 * per_tok / (14 * 8 * 989.4e12 * 0.40) / 86400
    plan = plan_fleet(load_fleet(SEVEN))
    m = next(m for m in plan.models if m.name == "llama31-8b-cpt")
    assert m.params == 8_030_261_248
    assert m.seed_days == pytest.approx(days, rel=1e-9)
    assert m.flops == pytest.approx(900e9 * per_tok, rel=1e-12)


# --------------------------------------------------------------------------- memory


def test_memory_by_hand_llama8b_one_node():
    shape = model_shape(Fleet.model_validate(_fleet()).models[0])
    mem = memory_per_gpu_gib(shape, total_gpus=8, micro_batch_size=2, seq_len=4096)
    assert mem["state"] == pytest.approx(8_030_261_248 * 16 / 8 / GIB)
    assert mem["working"] == pytest.approx(2 * 128256 * 4096 * 6 / GIB)  # the embedding is the largest unit
    assert mem["activations"] == pytest.approx(2 * 4096 * 4096 * 32 * 34 / GIB)
    assert mem["logits"] == pytest.approx(2 * 4096 * 128256 * 6 / GIB)
    assert mem["total"] == pytest.approx(sum(v for k, v in mem.items() if k != "total"))
    ckpt = memory_per_gpu_gib(shape, 8, 2, 4096, activation_checkpointing=True)
    assert ckpt["activations"] < mem["activations"] / 5


def _explicit(params: float) -> ModelShape:
    return ModelShape(
        params=params,
        matmul_params=params,
        n_layers=80,
        hidden_size=8192,
        vocab_size=0,
        largest_unit_params=params / 80,
    )


def test_just_fits_and_just_does_not():
    inst = get_instance("p5e.48xlarge")
    # one node: P*16/8 + 2*(P/80)*6 + activations + 6 GiB == GPU memory  ->  solve for P
    act = 1 * 2048 * 8192 * 80 * 34 / GIB
    p_fit = (inst.gpu_memory_gib - 6 - act) * GIB / (16 / 8 + 12 / 80)
    assert min_nodes_to_fit(_explicit(p_fit * 0.999), inst, 1, 2048) == 1
    assert min_nodes_to_fit(_explicit(p_fit * 1.001), inst, 1, 2048) == 2


def test_model_that_cannot_fit_on_the_whole_cluster():
    data = _fleet(
        models=[
            {
                "name": "huge",
                "params": 2e12,
                "n_layers": 1000,
                "hidden_size": 4096,
                "seq_len": 512,
                "tokens": 1e9,
                "mfu": 0.4,
            }
        ]
    )
    with pytest.raises(ClusterError, match=r"model huge: needs \d+ nodes to fit in memory .* the cluster has 80"):
        _plan(data)


def test_activations_alone_too_big_says_what_to_change():
    data = _fleet(
        models=[
            {
                "name": "long",
                "preset": "llama3.1-8b",
                "tokens": 1e9,
                "mfu": 0.4,
                "seq_len": 131072,
                "micro_batch_size": 4,
            }
        ]
    )
    with pytest.raises(
        ClusterError, match="does not fit on a H200-141GB .* at any node count.*activation_checkpointing"
    ):
        _plan(data)


# --------------------------------------------------------------------------- FLOPs and MFU


def test_flops_per_token_matches_trainer_convention():
    from mltrain.config import ModelConfig
    from mltrain.model.flops import flops_per_token as trainer_fpt

    for preset in ("qwen2.5-0.5b", "llama3.2-1b", "llama3.1-8b"):
        cfg = ModelConfig(preset=preset)
        shape = model_shape(
            Fleet.model_validate(_fleet(models=[{"name": "x", "preset": preset, "tokens": 1, "mfu": 0.5}])).models[0]
        )
        assert flops_per_token(shape, 4096) == pytest.approx(trainer_fpt(cfg, 4096), rel=1e-12)


def test_bench_result_json_and_metrics_jsonl(tmp_path):
    j = tmp_path / "bench.json"
    j.write_text(json.dumps({"result": {"mfu": 0.41, "tokens_per_s": 1.0}}))
    assert read_bench_mfu(j) == pytest.approx(0.41)
    m = tmp_path / "metrics.jsonl"
    lines = [{"kind": "start", "step": 0}] + [
        {"kind": "train", "step": i, "mfu": 0.1 if i < 2 else 0.3} for i in range(20)
    ]
    m.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert read_bench_mfu(m) == pytest.approx(0.3)  # warm-up steps dropped, median
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tokens_per_s": 3}))
    with pytest.raises(ClusterError, match="key 'mfu' not found"):
        read_bench_mfu(bad)
    # a fleet reading its MFU from a bench file, path relative to the fleet file
    (tmp_path / "fleet.yaml").write_text(
        yaml.safe_dump(
            _fleet(models=[{"name": "a", "preset": "llama3.2-1b", "tokens": "10B", "bench_result": "bench.json"}])
        )
    )
    plan = plan_fleet(load_fleet(tmp_path / "fleet.yaml"))
    assert plan.models[0].mfu == pytest.approx(0.41)


# --------------------------------------------------------------------------- allocation


def test_greedy_split_is_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(150):
        k = rng.randint(1, 3)
        total = rng.randint(k, 12)
        g = rng.choice([1, 1, 2])
        work = [rng.uniform(1, 100) for _ in range(k)]
        lo = [g * rng.randint(1, 2) for _ in range(k)]
        hi = [g * rng.randint(2, 6) for _ in range(k)]
        hi = [max(a, b) for a, b in zip(lo, hi, strict=True)]
        options = [range(a, b + 1, g) for a, b in zip(lo, hi, strict=True)]
        feasible = [c for c in itertools.product(*options) if sum(c) <= total]
        if not feasible:
            with pytest.raises(ClusterError):
                allocate_min_makespan(work, lo, hi, total, g)
            continue
        best = min(max(w / n for w, n in zip(work, c, strict=True)) for c in feasible)
        got = allocate_min_makespan(work, lo, hi, total, g)
        assert sum(got) <= total and all(a <= n <= b and n % g == 0 for n, a, b in zip(got, lo, hi, strict=True))
        assert max(w / n for w, n in zip(work, got, strict=True)) == pytest.approx(best)


def test_granularity_and_max_nodes_are_respected():
    data = _fleet(
        constraints={"node_granularity": 4, "max_nodes_per_model": 24},
        models=[
            {"name": f"m{i}", "preset": "llama3.2-1b", "tokens": f"{100 * (i + 1)}B", "mfu": 0.3} for i in range(3)
        ],
    )
    plan = _plan(data)
    assert all(m.nodes % 4 == 0 and m.nodes <= 24 for m in plan.models)
    assert plan.models[2].nodes == 24 and sum(m.nodes for m in plan.models) <= 80


# --------------------------------------------------------------------------- deadlines


def test_deadline_that_cannot_be_met_together():
    fleet = load_fleet(SEVEN, overrides=["constraints.deadline_days=9"])
    with pytest.raises(
        ClusterError, match=r"the models need \d+ nodes together to meet the deadlines .*cluster has 80"
    ):
        plan_fleet(fleet)


def test_deadline_that_one_model_cannot_meet_names_it():
    fleet = load_fleet(SEVEN, overrides=["constraints.deadline_days=9", "constraints.max_nodes_per_model=12"])
    with pytest.raises(ClusterError) as e:
        plan_fleet(fleet)
    msg = str(e.value)
    assert msg.startswith("model ") and "nodes to train" in msg and "in 9 days" in msg and "at most 12" in msg


def test_deadline_met_raises_the_lower_bound():
    plan = _plan(_fleet(constraints={"deadline_days": 3}))
    assert plan.models[0].days <= 3


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "over, match",
    [
        ({"cluster": {"instance_type": "p5e.48xlarge", "nodes": 0}}, "cluster.nodes: Input should be greater than 0"),
        ({"models": [{"name": "a", "preset": "llama3.1-8b", "tokens": -5, "mfu": 0.4}]}, "models.0.tokens"),
        ({"models": [{"name": "a", "preset": "llama3.1-8b", "tokens": "1B", "mfu": 0}]}, "models.0.mfu"),
        ({"models": [{"name": "a", "preset": "gpt5", "tokens": "1B", "mfu": 0.4}]}, "unknown preset 'gpt5'"),
        ({"models": [{"name": "a", "preset": "llama3.1-8b", "tokens": "1B"}]}, "exactly one of mfu or bench_result"),
        ({"models": [{"name": "a", "params": 1e9, "tokens": "1B", "mfu": 0.4}]}, "params needs n_layers"),
        ({"seed_split": [11, 11]}, "seed_split has 2 entries for 1 models"),
        (
            {"models": [{"name": "a", "arch": {"hidden_size": 100, "n_layers": 2}, "tokens": "1B", "mfu": 0.4}]},
            "arch.vocab_size: Field required",
        ),
        ({"seed_split": [0]}, "seed_split entries must be > 0"),
    ],
)
def test_bad_fleet_files_are_one_line_config_errors(tmp_path, over, match):
    p = tmp_path / "fleet.yaml"
    p.write_text(yaml.safe_dump(_fleet(**over)))
    with pytest.raises(ConfigError) as e:
        load_fleet(p)
    assert match in str(e.value) and "\n" not in str(e.value) and str(p) in str(e.value)


def test_unknown_instance_type_in_fleet_suggests():
    with pytest.raises(ClusterError, match="did you mean: p5e.48xlarge"):
        _plan(_fleet(cluster={"instance_type": "p5e.48xl", "nodes": 8}))


def test_min_nodes_above_cluster_and_granularity_errors():
    with pytest.raises(ClusterError, match="needs at least 16 nodes .* at most 8"):
        _plan(
            _fleet(
                cluster={"instance_type": "p5.48xlarge", "nodes": 8},
                models=[{"name": "a", "preset": "llama3.2-1b", "tokens": "1B", "mfu": 0.3, "min_nodes": 16}],
            )
        )
    with pytest.raises(ClusterError, match="node_granularity 16 is larger than the cluster"):
        _plan(_fleet(cluster={"instance_type": "p5.48xlarge", "nodes": 8}, constraints={"node_granularity": 16}))
    with pytest.raises(ClusterError, match="allocation needs positive nodes"):
        allocate_min_makespan([1.0], [1], [1], 0)


def test_price_unknown_is_reported_not_invented():
    plan = _plan(_fleet(cluster={"instance_type": "p5e.48xlarge", "nodes": 8, "region": "eu-north-1"}))
    assert plan.price_per_node_hour is None and plan.models[0].dollars is None
    assert "set cluster.price_per_node_hour" in plan.price_source


@pytest.mark.parametrize("raw, value", [("250B", 250e9), ("1.5T", 1.5e12), ("250e9", 250e9), (42, 42), ("3,000M", 3e9)])
def test_parse_count(raw, value):
    assert parse_count(raw) == value


# --------------------------------------------------------------------------- pinned by hand: dollars and capped splits

P5 = get_instance("p5.48xlarge")  # 8 x H100, 989.4 TFLOP/s dense bf16 each


def _explicit_model(name: str, tokens: float, **kw) -> dict:
    """A model given by numbers, so its FLOPs are simple: 6 * 1e9 + 12 * 10 * 1000 * 1000 = 6.12e9 per token."""
    return {"name": name, "params": 1e9, "n_layers": 10, "hidden_size": 1000, "seq_len": 1000,
            "tokens": tokens, "mfu": 0.5, **kw}  # fmt: skip


def _node_seconds(tokens: float) -> float:
    """Seconds the model takes on one p5.48xlarge at MFU 0.5, by hand."""
    return tokens * 6.12e9 / (8 * 989.4e12 * 0.5)


def test_dollars_and_seed_dollars_by_hand():
    """$100/node-hour: a model's cost is its node-hours x price whatever its node count (linear scaling),
    for the planned split and the seed split alike."""
    data = {
        "cluster": {"instance_type": "p5.48xlarge", "nodes": 10, "price_per_node_hour": 100.0},
        "models": [_explicit_model("a", 3e12), _explicit_model("b", 1e12)],
        "seed_split": [4, 6],
    }
    plan = _plan(data)
    a, b = plan.models
    assert plan.price_per_node_hour == 100.0 and plan.price_source == "fleet file"
    assert a.flops == pytest.approx(3e12 * 6.12e9, rel=1e-12)
    assert a.node_days_work == pytest.approx(_node_seconds(3e12) / 86400, rel=1e-12)
    # 3:1 work on 10 nodes: 7 + 3 (makespan 3/7 of a's one-node time; 8 + 2 would leave b at 1/2)
    assert (a.nodes, b.nodes) == (7, 3)
    assert a.days == pytest.approx(_node_seconds(3e12) / 7 / 86400, rel=1e-12)
    assert b.days == pytest.approx(_node_seconds(1e12) / 3 / 86400, rel=1e-12)
    assert a.node_hours == pytest.approx(_node_seconds(3e12) / 3600, rel=1e-12)
    assert a.dollars == pytest.approx(_node_seconds(3e12) / 3600 * 100.0, rel=1e-12)
    assert b.dollars == pytest.approx(_node_seconds(1e12) / 3600 * 100.0, rel=1e-12)
    # the seed split: 4 and 6 nodes; same node-hours and dollars, other days
    assert (a.seed_nodes, b.seed_nodes) == (4, 6)
    assert a.seed_days == pytest.approx(_node_seconds(3e12) / 4 / 86400, rel=1e-12)
    assert b.seed_days == pytest.approx(_node_seconds(1e12) / 6 / 86400, rel=1e-12)
    assert a.seed_node_hours == pytest.approx(_node_seconds(3e12) / 3600, rel=1e-12)
    assert a.seed_dollars == pytest.approx(_node_seconds(3e12) / 3600 * 100.0, rel=1e-12)
    assert b.seed_dollars == pytest.approx(_node_seconds(1e12) / 3600 * 100.0, rel=1e-12)
    # totals: makespan = the longest model; the cluster is held (all 10 nodes) for it
    t, s = plan.totals, plan.seed_totals
    assert t.makespan_days == pytest.approx(_node_seconds(3e12) / 7 / 86400, rel=1e-12)
    assert t.busy_node_hours == pytest.approx(_node_seconds(4e12) / 3600, rel=1e-12)
    assert t.cluster_dollars == pytest.approx(10 * t.makespan_days * 24 * 100.0, rel=1e-12)
    assert t.busy_dollars == pytest.approx(_node_seconds(4e12) / 3600 * 100.0, rel=1e-12)
    assert s.makespan_days == pytest.approx(_node_seconds(3e12) / 4 / 86400, rel=1e-12)
    assert s.idle_node_hours == pytest.approx(s.cluster_node_hours - s.busy_node_hours, rel=1e-12)


def test_seed_dollars_in_plan_json(tmp_path):
    """`mltrain plan --json`, the figures a user compares: seed_dollars per model = its node-hours x price."""
    import subprocess
    import sys

    data = {
        "cluster": {"instance_type": "p5.48xlarge", "nodes": 10, "price_per_node_hour": 100.0},
        "models": [_explicit_model("a", 3e12), _explicit_model("b", 1e12)],
        "seed_split": [4, 6],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    r = subprocess.run([sys.executable, "-m", "mltrain", "plan", str(path), "--json"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for m, tokens in zip(doc["models"], (3e12, 1e12), strict=True):
        assert m["seed_dollars"] == pytest.approx(_node_seconds(tokens) / 3600 * 100.0, rel=1e-9)
        assert m["dollars"] == pytest.approx(m["seed_dollars"], rel=1e-9)
    assert [m["nodes"] for m in doc["models"]] == [7, 3]


def test_split_when_a_max_nodes_cap_binds_by_hand():
    """Work 100 : 90 : 66 on 16 nodes, the first model capped at 4. Growing the longest job each time:
    [1,1,1] -> a2 b2 c2 a3 b3 a4 c3 b4 (times 25, 22.5, 22), then the longest (a, 25) is at its cap and
    the makespan cannot drop: [4, 4, 3], 5 nodes left unassigned (and said so)."""
    assert allocate_min_makespan([100, 90, 66], [1, 1, 1], [4, 16, 16], 16) == [4, 4, 3]
    data = {
        "cluster": {"instance_type": "p5.48xlarge", "nodes": 16, "price_per_node_hour": 100.0},
        "models": [
            _explicit_model("a", 100e9, max_nodes=4),
            _explicit_model("b", 90e9),
            _explicit_model("c", 66e9),
        ],
    }
    plan = _plan(data)
    assert [m.nodes for m in plan.models] == [4, 4, 3]
    assert plan.models[0].days == pytest.approx(_node_seconds(100e9) / 4 / 86400, rel=1e-12)
    assert plan.totals.makespan_days == pytest.approx(plan.models[0].days)
    assert plan.totals.nodes_used == 11
    assert "5 nodes left unassigned: the longest model is at its max_nodes" in plan.notes
    # the per-model cap and the fleet-wide cap: the smaller binds
    capped = _plan({**data, "constraints": {"max_nodes_per_model": 6},
                    "models": [_explicit_model("a", 100e9, max_nodes=8), _explicit_model("b", 10e9)]})  # fmt: skip
    assert [m.nodes for m in capped.models] == [6, 1]  # a stops at 6 (16.7 > b's 10 on one node)
    capped = _plan({**data, "constraints": {"max_nodes_per_model": 6},
                    "models": [_explicit_model("a", 100e9, max_nodes=3), _explicit_model("b", 10e9)]})  # fmt: skip
    assert [m.nodes for m in capped.models] == [3, 1]


def test_capped_split_with_granularity_by_hand():
    # granularity 2, caps 4: a 2->4 (25), b 2 (45) ->4 (22.5); a at cap with the longest time: stop
    assert allocate_min_makespan([100, 90], [2, 2], [4, 8], 12, 2) == [4, 4]
    # without a cap the free nodes keep going to the longest: a 6 (16.7), b 6 (15)
    assert allocate_min_makespan([100, 90], [2, 2], [12, 12], 12, 2) == [6, 6]


def test_memory_parts_by_hand_with_checkpointing_and_a_block_larger_than_the_embedding():
    """hidden 512, 3 layers, 8 heads / 2 KV heads (head_dim 64, kv 128), SwiGLU 2048, vocab 100:
    per block 2*512*512 + 2*512*128 + 3*512*2048 + 2*512 = 3,802,112 (larger than the 51,200 embedding)."""
    from mltrain.cluster.planner import shape_from_config
    from mltrain.config import ModelConfig

    arch = {
        "vocab_size": 100,
        "hidden_size": 512,
        "n_layers": 3,
        "n_heads": 8,
        "n_kv_heads": 2,
        "ffn_hidden_size": 2048,
    }
    untied = shape_from_config(ModelConfig.model_validate(arch))
    assert untied.largest_unit_params == 3_802_112
    assert untied.params == 3 * 3_802_112 + 512 + 2 * 51_200
    assert untied.matmul_params == 3 * 3_802_112 + 512 + 51_200
    tied = shape_from_config(ModelConfig.model_validate({**arch, "tie_embeddings": True}))
    assert tied.largest_unit_params == 3_802_112 and tied.params == 3 * 3_802_112 + 512 + 51_200
    mem = memory_per_gpu_gib(untied, total_gpus=4, micro_batch_size=2, seq_len=1024, activation_checkpointing=True)
    gib = 2**30
    assert mem["state"] == pytest.approx(untied.params * 16 / 4 / gib, rel=1e-12)
    assert mem["working"] == pytest.approx(2 * 3_802_112 * 6 / gib, rel=1e-12)
    # checkpointed: 2 B per layer for the kept inputs + one layer recomputed at 34 B
    assert mem["activations"] == pytest.approx(2 * 1024 * 512 * (3 * 2 + 34) / gib, rel=1e-12)
    assert mem["logits"] == pytest.approx(2 * 1024 * 100 * 6 / gib, rel=1e-12)
    assert mem["overhead"] == 6.0
    assert mem["total"] == pytest.approx(sum(v for k, v in mem.items() if k != "total"), rel=1e-12)
    with pytest.raises(ClusterError, match="positive GPU count, got 0"):
        memory_per_gpu_gib(untied, 0, 1, 1024)


# --------------------------------------------------------------------------- exact edges (each `<` vs `<=` decided)


def _inst(gpu_memory_gib: float, accelerators: int = 8):
    from mltrain.cluster.catalog import InstanceType

    return InstanceType(name="x", accelerators=accelerators, accelerator="X", gpu_memory_gib=gpu_memory_gib, vcpus=1,
                        memory_gib=1, network_gbps=1, efa_interfaces=0, peak_bf16_tflops=1.0)  # fmt: skip


def test_fit_edges_are_exact():
    """Only the sharded state counts (every other part zeroed): 40 GiB-params x 16 B on 8 GPUs is exactly 80 GiB
    per GPU, which fits an 80 GiB GPU on one node; with no room left beside the fixed parts, nothing fits."""
    from mltrain.cluster.planner import Assumptions

    state_only = Assumptions(working_bytes_per_param=0, activation_bytes_per_token_hidden=0,
                             checkpointed_bytes_per_token_hidden=0, logits_bytes_per_token_vocab=0, overhead_gib=0)  # fmt: skip
    shape = ModelShape(params=40 * 2**30, matmul_params=1, n_layers=1, hidden_size=1, vocab_size=1,
                       largest_unit_params=1)  # fmt: skip
    assert memory_per_gpu_gib(shape, 8, 1, 1, a=state_only)["total"] == 80.0
    assert min_nodes_to_fit(shape, _inst(80.0), 1, 1, a=state_only) == 1
    assert min_nodes_to_fit(shape, _inst(79.5), 1, 1, a=state_only) == 2
    full = Assumptions(working_bytes_per_param=0, activation_bytes_per_token_hidden=0,
                       checkpointed_bytes_per_token_hidden=0, logits_bytes_per_token_vocab=0, overhead_gib=80.0)  # fmt: skip
    assert min_nodes_to_fit(shape, _inst(80.0), 1, 1, a=full) is None  # room exactly 0
    assert min_nodes_to_fit(shape, _inst(80.0), 1, 1, a=Assumptions(overhead_gib=81.0)) is None


def test_bounds_that_exactly_fill_the_cluster_are_feasible():
    models = [_explicit_model("a", 1e11, min_nodes=4), _explicit_model("b", 1e11, min_nodes=4)]
    plan = _plan({"cluster": {"instance_type": "p5.48xlarge", "nodes": 8}, "models": models})
    assert [m.nodes for m in plan.models] == [4, 4] and plan.notes == []  # every node used: no "left unassigned"
    plan = _plan({"cluster": {"instance_type": "p5.48xlarge", "nodes": 8}, "constraints": {"node_granularity": 8},
                  "models": [_explicit_model("a", 1e11)]})  # fmt: skip
    assert [m.nodes for m in plan.models] == [8]
    with pytest.raises(
        ClusterError, match=r"the models need 9 nodes together at least \(a 4, b 5\); the cluster has 8"
    ):
        _plan({"cluster": {"instance_type": "p5.48xlarge", "nodes": 8},
               "models": [models[0], _explicit_model("b", 1e11, min_nodes=5)]})  # fmt: skip


def test_explicit_model_shape_by_hand():
    m = Fleet.model_validate({"cluster": {"instance_type": "p5.48xlarge", "nodes": 1},
                              "models": [_explicit_model("a", 1e9)]}).models[0]  # fmt: skip
    shape = model_shape(m)
    assert (shape.params, shape.matmul_params, shape.n_layers, shape.hidden_size) == (1e9, 1e9, 10, 1000)
    assert shape.vocab_size == 0 and shape.largest_unit_params == 1e8  # one layer of ten; no vocabulary given
    m = m.model_copy(update={"vocab_size": 200_000})
    assert model_shape(m).largest_unit_params == 2e8  # the 200k x 1000 embedding is the larger unit


def test_mfu_and_allocation_argument_edges(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"mfu": 1.0}))
    assert read_bench_mfu(one) == 1.0  # (0, 1]: 1 is allowed
    for bad in (0.0, 1.01, -0.2):
        one.write_text(json.dumps({"summary": {"mfu": bad}}))
        with pytest.raises(ClusterError, match=f"mfu {bad} is not in"):
            read_bench_mfu(one)
    with pytest.raises(ClusterError, match="positive nodes and granularity, got 4 and 0"):
        allocate_min_makespan([1.0], [1], [4], 4, 0)
    with pytest.raises(ClusterError, match="positive work"):
        allocate_min_makespan([1.0, 0.0], [1, 1], [4, 4], 4)
    assert allocate_min_makespan([1.0, 1.0], [2, 2], [2, 2], 4) == [2, 2]  # bounds exactly the cluster


def test_a_model_that_needs_the_whole_cluster_to_fit_gets_it():
    inst = get_instance("p5.48xlarge")
    act = 1 * 2048 * 8192 * 80 * 34 / 2**30
    p_one_node = (inst.gpu_memory_gib - 6 - act) * 2**30 / (16 / 8 + 12 / 80)
    model = {"name": "big", "params": p_one_node * 1.01, "n_layers": 80, "hidden_size": 8192, "seq_len": 2048,
             "tokens": 1e9, "mfu": 0.4}  # fmt: skip
    plan = _plan({"cluster": {"instance_type": "p5.48xlarge", "nodes": 2}, "models": [model], "seed_split": [2]})
    assert plan.models[0].min_nodes_fit == 2 and plan.models[0].nodes == 2
    assert plan.models[0].seed_note is None  # the seed's 2 nodes are exactly enough
    shape = model_shape(Fleet.model_validate({"cluster": {"instance_type": "p5.48xlarge", "nodes": 2},
                                              "models": [model]}).models[0])  # fmt: skip
    assert plan.models[0].mem_gib_per_gpu == pytest.approx(memory_per_gpu_gib(shape, 16, 1, 2048)["total"], rel=1e-12)
    assert plan.models[0].mem_gib_per_gpu <= inst.gpu_memory_gib
    plan = _plan({"cluster": {"instance_type": "p5.48xlarge", "nodes": 2}, "models": [model], "seed_split": [1]})
    assert plan.models[0].seed_note == "does not fit: needs 2 nodes"
    with pytest.raises(ClusterError, match="model big: needs 2 nodes to fit in memory .* the cluster has 1"):
        _plan({"cluster": {"instance_type": "p5.48xlarge", "nodes": 1}, "models": [model]})


def test_equal_min_and_max_nodes_and_seed_split_notes():
    models = [_explicit_model("a", 1e11, min_nodes=4, max_nodes=4), _explicit_model("b", 1e11)]
    plan = _plan({"cluster": {"instance_type": "p5.48xlarge", "nodes": 8}, "models": models, "seed_split": [4, 4]})
    assert [m.nodes for m in plan.models] == [4, 4]
    assert not any("seed split uses" in n for n in plan.notes)  # 4 + 4 = the cluster's 8: nothing to say
    plan = _plan({"cluster": {"instance_type": "p5.48xlarge", "nodes": 8}, "models": models, "seed_split": [4, 5]})
    assert "seed split uses 9 nodes, the cluster has 8" in plan.notes
    assert plan.models[1].seed_note is None and plan.models[1].seed_days == pytest.approx(
        _node_seconds(1e11) / 5 / 86400, rel=1e-12
    )


def test_objective_names_deadlines_from_the_model_or_the_constraints():
    assert _plan(_fleet()).objective == "min makespan"
    assert _plan(_fleet(constraints={"deadline_days": 30})).objective == "min makespan meeting deadlines"
    one = _fleet(models=[{"name": "a", "preset": "llama3.1-8b", "tokens": "100B", "mfu": 0.4, "deadline_days": 30}])
    assert _plan(one).objective == "min makespan meeting deadlines"


def test_fit_with_little_room_and_one_gpu_nodes():
    from mltrain.cluster.planner import Assumptions

    shape = ModelShape(params=40 * 2**30, matmul_params=1, n_layers=1, hidden_size=1, vocab_size=1,
                       largest_unit_params=1)  # fmt: skip
    tight = Assumptions(working_bytes_per_param=0, activation_bytes_per_token_hidden=0,
                        checkpointed_bytes_per_token_hidden=0, logits_bytes_per_token_vocab=0, overhead_gib=79.5)  # fmt: skip
    assert min_nodes_to_fit(shape, _inst(80.0), 1, 1, a=tight) == 160  # 640 GiB of state in 0.5 GiB per GPU, 8 per node
    small = ModelShape(params=2**30, matmul_params=1, n_layers=1, hidden_size=1, vocab_size=1, largest_unit_params=1)
    assert min_nodes_to_fit(small, _inst(80.0, accelerators=1), 1, 1) == 1


def test_bench_mfu_edges(tmp_path):
    with pytest.raises(ClusterError, match="cannot read bench result: No such file or directory"):
        read_bench_mfu(tmp_path / "missing.json")
    m = tmp_path / "metrics.jsonl"
    lines = [{"kind": "eval", "step": 0, "mfu": 0.9}] + [
        {"kind": "train", "step": i, "mfu": i / 100} for i in range(1, 21)
    ]  # 0.01 .. 0.20; the first 2 (10%) are warm-up, the eval line is not a train step
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert read_bench_mfu(m) == pytest.approx((0.11 + 0.12) / 2)


def test_price_source_says_which_region_is_unknown():
    plan = _plan(_fleet(cluster={"instance_type": "p5e.48xlarge", "nodes": 8}))
    assert plan.price_source == "unknown for no region: set cluster.price_per_node_hour"
    plan = _plan(_fleet(cluster={"instance_type": "p5e.48xlarge", "nodes": 8, "region": "eu-north-1"}))
    assert plan.price_source == "unknown for eu-north-1: set cluster.price_per_node_hour"


def test_deadline_that_needs_exactly_the_cap_or_just_over_it():
    w = _node_seconds(1e12)
    exact = {"cluster": {"instance_type": "p5.48xlarge", "nodes": 8},
             "models": [_explicit_model("a", 1e12, max_nodes=4, deadline_days=w / 3.5 / 86400)]}  # fmt: skip
    assert [m.nodes for m in _plan(exact).models] == [4]  # needs ceil(3.5) = 4 = the cap
    over = {"cluster": {"instance_type": "p5.48xlarge", "nodes": 8},
            "models": [_explicit_model("a", 1e12, max_nodes=4, deadline_days=w / (4 + 1e-5) / 86400)]}  # fmt: skip
    with pytest.raises(ClusterError, match="model a: needs 5 nodes to train 1e\\+12 tokens in .* at most 4"):
        _plan(over)
