"""Planner edges that mutation testing found unchecked: the bench MFU reader's formats, warm-up cut and
range, every error line, and the split totals by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mltrain.cluster import planner as P
from mltrain.errors import ClusterError


def _jsonl(path: Path, mfus: list, kind: str = "train") -> Path:
    path.write_text("".join(json.dumps({"kind": kind, "step": i, "mfu": v}) + "\n" for i, v in enumerate(mfus)))
    return path


def test_mfu_from_each_place_in_a_json(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    for doc, want in [
        ({"mfu": 0.5, "result": {"mfu": 0.2}}, 0.5),  # top level first
        ({"result": {"mfu": 0.2}, "summary": {"mfu": 0.3}}, 0.2),
        ({"summary": {"mfu": 0.3}}, 0.3),
        ({"summary": {"mfu": 1}}, 1.0),  # an int, and 1 itself is allowed
        ({"mfu": "0.5", "summary": {"mfu": 0.25}}, 0.25),  # not a number: looked for further
    ]:
        p.write_text(json.dumps(doc))
        assert P.read_bench_mfu(p) == pytest.approx(want), doc


@pytest.mark.parametrize("value", [0, -0.1, 1.5, 2.0])
def test_mfu_out_of_range_is_refused(tmp_path: Path, value: float) -> None:
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"mfu": value}))
    with pytest.raises(ClusterError) as e:
        P.read_bench_mfu(p)
    assert str(e.value) == f"{p}: mfu {float(value)} is not in (0, 1]"


def test_mfu_json_errors_are_one_line(tmp_path: Path) -> None:
    p = tmp_path / "b.json"
    p.write_text("[1, 2]")  # JSON, but no mapping
    with pytest.raises(ClusterError) as e:
        P.read_bench_mfu(p)
    assert str(e.value) == f"{p}: key 'mfu' not found (top level, result or summary)"
    p.write_text("{nope")
    with pytest.raises(ClusterError) as e:
        P.read_bench_mfu(p)
    assert str(e.value).startswith(f"{p}: not JSON: Expecting property name")
    with pytest.raises(ClusterError) as e:
        P.read_bench_mfu(tmp_path / "missing.json")
    assert str(e.value) == f"{tmp_path / 'missing.json'}: cannot read bench result: No such file or directory"


def test_mfu_from_metrics_drops_a_tenth_as_warm_up(tmp_path: Path) -> None:
    # 20 train lines: the first 2 dropped -> median of 9 x 0.2 and 9 x 0.4 = 0.3 (dropping 1 would keep a 0.9)
    p = _jsonl(tmp_path / "m.jsonl", [0.9, 0.9] + [0.2] * 9 + [0.4] * 9)
    assert P.read_bench_mfu(p) == pytest.approx(0.3)


def test_mfu_from_metrics_reads_only_train_lines_with_numbers(tmp_path: Path) -> None:
    p = tmp_path / "m.jsonl"
    lines = [
        {"kind": "eval", "mfu": 0.9},
        {"kind": "train", "mfu": None},
        {"kind": "train", "mfu": "0.9"},
        {"kind": "train", "mfu": 0.3},
    ]
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert P.read_bench_mfu(p) == pytest.approx(0.3)
    _jsonl(p, [0.9, 0.9], kind="eval")
    with pytest.raises(ClusterError) as e:
        P.read_bench_mfu(p)
    assert str(e.value) == f"{p}: no train lines with an mfu value"


def test_split_totals_by_hand() -> None:
    t = P._totals([4, 2], [2.0, 3.0], 8, 10.0)
    assert t.nodes_used == 6 and t.makespan_days == 3.0
    assert t.busy_node_hours == pytest.approx((4 * 2 + 2 * 3) * 24)
    assert t.cluster_node_hours == pytest.approx(8 * 3 * 24)
    assert t.idle_node_hours == pytest.approx(8 * 3 * 24 - 14 * 24)
    assert t.busy_dollars == pytest.approx(14 * 24 * 10.0) and t.cluster_dollars == pytest.approx(8 * 72 * 10.0)
    free = P._totals([1], [1.0], 2, None)
    assert free.busy_dollars is None and free.cluster_dollars is None


def test_allocation_argument_checks() -> None:
    assert P.allocate_min_makespan([4.0, 1.0], [1, 1], [8, 8], 4) == [3, 1]  # granularity 1 by default
    assert P.allocate_min_makespan([0.5], [1], [4], 4) == [4]  # work below 1 is still work
    for total, g in [(0, 1), (-1, 1), (4, 0), (4, -2)]:
        with pytest.raises(ClusterError) as e:
            P.allocate_min_makespan([1.0], [1], [4], total, g)
        assert str(e.value) == f"allocation needs positive nodes and granularity, got {total} and {g}"
    for work in ([1.0, 0.0], [-1.0]):
        with pytest.raises(ClusterError) as e:
            P.allocate_min_makespan(work, [1] * len(work), [4] * len(work), 4)
        assert str(e.value) == "allocation needs positive work for every model"
    with pytest.raises(ClusterError) as e:
        P.allocate_min_makespan([1.0, 1.0], [3, 2], [4, 4], 4)
    assert str(e.value) == "the models need 5 nodes together, the cluster has 4"
    assert P.allocate_min_makespan([1.0, 1.0], [2, 2], [4, 4], 4) == [2, 2]  # exactly the cluster: fine


def _cfg(tie: bool):
    from mltrain.config import ModelConfig

    return ModelConfig(
        vocab_size=16, hidden_size=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden_size=256, tie_embeddings=tie
    )


@pytest.mark.parametrize("tie", [False, True])
def test_shape_from_config_by_hand(tie: bool) -> None:
    d, kv = 64, 2 * 16  # n_kv_heads x head_dim
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * 256 + 2 * d
    emb = 16 * d
    shape = P.shape_from_config(_cfg(tie))
    assert shape.largest_unit_params == per_layer  # a layer is bigger than the 16-token embedding
    assert shape.params == 3 * per_layer + d + emb * (1 if tie else 2)
    assert shape.matmul_params == 3 * per_layer + d + emb
    assert (shape.n_layers, shape.hidden_size, shape.vocab_size) == (3, 64, 16)


SHAPE = P.ModelShape(
    params=1e9, matmul_params=1e9, n_layers=10, hidden_size=1000, vocab_size=100, largest_unit_params=1e8
)


def test_memory_by_part_by_hand() -> None:
    a = P.DEFAULT_ASSUMPTIONS
    tokens = 2 * 512
    for ckpt, act in [(False, tokens * 1000 * 10 * 34.0), (True, tokens * 1000 * (10 * 2.0 + 34.0))]:
        got = P.memory_per_gpu_gib(SHAPE, 4, 2, 512, ckpt)
        want = {
            "state": 1e9 * 16 / 4 / P.GIB,
            "working": 2 * 1e8 * 6 / P.GIB,
            "activations": act / P.GIB,
            "logits": tokens * 100 * 6 / P.GIB,
            "overhead": a.overhead_gib,
        }
        want["total"] = sum(want.values())
        assert got == pytest.approx(want) and list(got) == list(want)
    for n in (0, -1):
        with pytest.raises(ClusterError) as e:
            P.memory_per_gpu_gib(SHAPE, n, 1, 1)
        assert str(e.value) == f"memory estimate needs a positive GPU count, got {n}"


# A 1-GPU instance with 22.5 GiB; a model whose only memory is its state (no layers to hold
# activations), with the overhead set so that exactly 1.0 GiB per GPU is left for the state.
G5 = "g5.xlarge"
BARE = {"n_layers": 0, "hidden_size": 0, "vocab_size": 0, "largest_unit_params": 0.0}
ROOM_1 = P.Assumptions(overhead_gib=21.5)


def _bare(state_gib: float) -> P.ModelShape:
    params = state_gib * P.GIB / 16
    return P.ModelShape(params=params, matmul_params=params, **BARE)


def test_min_nodes_exact_fit_is_enough() -> None:
    from mltrain.cluster.catalog import get_instance

    g5 = get_instance(G5)
    assert P.min_nodes_to_fit(_bare(2.0), g5, 1, 1, a=ROOM_1) == 2  # 1.0 GiB of state each: exactly full
    assert P.min_nodes_to_fit(_bare(1.0), g5, 1, 1, a=ROOM_1) == 1
    assert P.min_nodes_to_fit(_bare(0.5), g5, 1, 1, a=ROOM_1) == 1  # less than one GPU's room: still 1
    # a hair over 2 GiB: the first estimate says 2, the check finds it does not fit, 3 it is
    assert P.min_nodes_to_fit(_bare(2.0 + 2**-30), g5, 1, 1, a=ROOM_1) == 3
    assert P.min_nodes_to_fit(_bare(2.0), g5, 1, 1, a=P.Assumptions(overhead_gib=22.0)) == 4  # room 0.5
    assert P.min_nodes_to_fit(_bare(0.1), g5, 1, 1, a=P.Assumptions(overhead_gib=22.5)) is None  # no room at all


def test_min_nodes_with_activation_checkpointing() -> None:
    """Activations that only fit with checkpointing: the flag must reach both estimates."""
    from mltrain.cluster.catalog import get_instance

    g5 = get_instance(G5)
    shape = P.ModelShape(
        params=1e8, matmul_params=1e8, n_layers=40, hidden_size=1024, vocab_size=0, largest_unit_params=0.0
    )
    # 8 x 1024 tokens: without checkpointing 8192 x 1024 x 40 x 34 B = 10.6 GiB, with it 8192 x 1024 x 114 B = 0.9 GiB
    assert (
        P.min_nodes_to_fit(shape, g5, 8, 1024, activation_checkpointing=False, a=P.Assumptions(overhead_gib=12.0))
        is None
    )
    assert (
        P.min_nodes_to_fit(shape, g5, 8, 1024, activation_checkpointing=True, a=P.Assumptions(overhead_gib=12.0)) == 1
    )


def test_price_source_from_fleet_or_catalog() -> None:
    from mltrain.cluster.fleet import Fleet

    def plan(cluster: dict):
        return P.plan_fleet(
            Fleet.model_validate(
                {"cluster": cluster, "models": [{"name": "a", "preset": "llama3.2-1b", "tokens": "1B", "mfu": 0.4}]}
            )
        )

    p = plan({"instance_type": "g5.48xlarge", "nodes": 2, "region": "us-east-1"})
    assert (p.price_per_node_hour, p.price_source) == (16.288, "catalog, us-east-1")
    p = plan({"instance_type": "g5.48xlarge", "nodes": 2, "region": "us-east-1", "price_per_node_hour": 3.0})
    assert (p.price_per_node_hour, p.price_source) == (3.0, "fleet file")
    p = plan({"instance_type": "p4d.24xlarge", "nodes": 2, "region": "us-east-1"})
    assert (p.price_per_node_hour, p.price_source) == (21.96, "catalog, us-east-1 (estimate)")
    p = plan({"instance_type": "g5.48xlarge", "nodes": 2})
    assert p.price_per_node_hour is None and p.price_source.startswith("unknown for no region")


def _fleet(models: list[dict], nodes: int = 10, **over):
    from mltrain.cluster.fleet import Fleet

    base = {"cluster": {"instance_type": "g5.48xlarge", "nodes": nodes, "region": "us-east-1"}, "models": models}
    return Fleet.model_validate({**base, **over})


M1 = {
    "name": "a",
    "params": 2e9,
    "n_layers": 20,
    "hidden_size": 2048,
    "vocab_size": 32000,
    "tokens": 4e10,
    "mfu": 0.4,
    "seq_len": 1024,
}
M2 = {
    "name": "b",
    "params": 5e8,
    "n_layers": 10,
    "hidden_size": 1024,
    "vocab_size": 32000,
    "tokens": 1e10,
    "mfu": 0.5,
    "seq_len": 1024,
}


def test_plan_fleet_numbers_by_hand() -> None:
    from mltrain.cluster.catalog import get_instance

    g5 = get_instance("g5.48xlarge")
    fleet = _fleet([M1, {**M2, "max_nodes": 2}], seed_split=[1, 11])
    plan = P.plan_fleet(fleet)
    assert (plan.instance_type, plan.region, plan.nodes, plan.gpus_per_node) == ("g5.48xlarge", "us-east-1", 10, 8)
    assert (plan.gpu, plan.peak_tflops, plan.objective) == ("A10G-24GB", 70, "min makespan")
    assert plan.assumptions == {
        "state_bytes_per_param": 16.0,
        "working_bytes_per_param": 6.0,
        "units_in_flight": 2,
        "activation_bytes_per_token_hidden": 34.0,
        "checkpointed_bytes_per_token_hidden": 2.0,
        "logits_bytes_per_token_vocab": 6.0,
        "overhead_gib": 6.0,
    }
    price = 16.288
    for m, spec in zip(plan.models, (M1, M2), strict=True):
        fleet_model = next(x for x in fleet.models if x.name == spec["name"])
        shape = P.model_shape(fleet_model)
        f = P.flops_per_token(shape, 1024) * spec["tokens"]
        work = f / (8 * 70e12 * spec["mfu"])
        d = work / m.nodes / 86400
        assert (m.name, m.params, m.tokens, m.seq_len, m.mfu) == (
            spec["name"],
            spec["params"],
            spec["tokens"],
            1024,
            spec["mfu"],
        )
        assert m.flops == pytest.approx(f) and m.node_days_work == pytest.approx(work / 86400)
        assert m.min_nodes_fit == P.min_nodes_to_fit(shape, g5, 1, 1024)
        assert m.mem_gib_per_gpu == pytest.approx(P.memory_per_gpu_gib(shape, m.nodes * 8, 1, 1024)["total"])
        assert m.days == pytest.approx(d) and m.node_hours == pytest.approx(m.nodes * d * 24)
        assert m.dollars == pytest.approx(m.node_hours * price)
    a, b = plan.models
    assert a.nodes + b.nodes == 10 and b.nodes <= 2 < a.nodes
    assert plan.notes == ["seed split uses 12 nodes, the cluster has 10"]  # every node assigned: no other note
    t = plan.totals
    assert t.nodes_used == 10 and t.makespan_days == pytest.approx(max(a.days, b.days))
    # the seed split, as given, with its notes
    assert (a.seed_nodes, b.seed_nodes) == (1, 11)
    assert a.seed_days == pytest.approx(a.node_days_work) and b.seed_days == pytest.approx(b.node_days_work / 11)
    assert a.seed_node_hours == pytest.approx(a.node_days_work * 24) and a.seed_dollars == pytest.approx(
        a.seed_node_hours * price
    )
    assert plan.seed_totals.nodes_used == 12
    assert plan.seed_totals.makespan_days == pytest.approx(max(a.seed_days, b.seed_days))
    assert (a.seed_note is None) == (a.min_nodes_fit <= 1)
    assert b.seed_note is None


def test_plan_fleet_notes() -> None:
    plan = P.plan_fleet(_fleet([{**M2, "max_nodes": 3}], seed_split=[12]))
    assert plan.notes == [
        "seed split uses 12 nodes, the cluster has 10",
        "7 nodes left unassigned: the longest model is at its max_nodes",
    ]
    big = {**M1, "params": 3e10, "n_layers": 60, "hidden_size": 2048}
    plan = P.plan_fleet(_fleet([big], seed_split=[1]))
    fit = plan.models[0].min_nodes_fit
    assert fit > 1 and plan.models[0].seed_note == f"does not fit: needs {fit} nodes"
    assert plan.seed_totals is not None and P.plan_fleet(_fleet([M2])).seed_totals is None


def test_plan_fleet_deadline_and_bounds() -> None:
    plain = P.plan_fleet(_fleet([M1, M2]))
    slow_days = plain.models[0].node_days_work
    # a deadline that needs 4 nodes for a: its lower bound, the objective says so
    plan = P.plan_fleet(_fleet([{**M1, "deadline_days": slow_days / 3.5}, M2], nodes=10))
    assert plan.objective == "min makespan meeting deadlines" and plan.models[0].nodes >= 4
    plan = P.plan_fleet(_fleet([M1, M2], constraints={"deadline_days": slow_days / 3.5}))
    assert plan.objective == "min makespan meeting deadlines" and plan.models[0].nodes >= 4
    with pytest.raises(ClusterError) as e:
        P.plan_fleet(_fleet([{**M1, "deadline_days": slow_days / 12.5}, M2]))
    assert str(e.value) == (
        f"model a: needs 13 nodes to train 4e+10 tokens in {slow_days / 12.5:g} days at MFU 0.40, but may use at most 10"
    )
    with pytest.raises(ClusterError) as e:
        P.plan_fleet(_fleet([{**M1, "min_nodes": 6}, {**M2, "min_nodes": 5}]))
    assert str(e.value) == "the models need 11 nodes together at least (a 6, b 5); the cluster has 10"
    with pytest.raises(ClusterError) as e:
        P.plan_fleet(_fleet([{**M1, "min_nodes": 6, "deadline_days": 1000}, {**M2, "min_nodes": 5}]))
    assert str(e.value) == "the models need 11 nodes together to meet the deadlines (a 6, b 5); the cluster has 10"
    with pytest.raises(ClusterError) as e:
        P.plan_fleet(_fleet([{**M1, "min_nodes": 3}], constraints={"max_nodes_per_model": 2}))
    assert str(e.value) == "model a: needs at least 3 nodes (fit 1, granularity 1) but may use at most 2"
    plan = P.plan_fleet(_fleet([M1], constraints={"min_nodes_per_model": 3, "max_nodes_per_model": 5}))
    assert plan.models[0].nodes == 5
    plan = P.plan_fleet(_fleet([M1, M2], constraints={"node_granularity": 3}))
    assert [m.nodes for m in plan.models] == [6, 3]


def test_plan_fleet_models_that_do_not_fit() -> None:
    huge = {**M1, "name": "h", "params": 4e11, "n_layers": 1000, "hidden_size": 1024, "activation_checkpointing": True}
    with pytest.raises(ClusterError) as e:
        P.plan_fleet(_fleet([huge]))
    msg = str(e.value)
    assert msg.startswith("model h: needs ") and " nodes to fit in memory (" in msg
    assert ", the cluster has 10" in msg and "GiB/GPU on all 10 nodes, GPU has 22.5)" in msg
    wide = {**M2, "name": "w", "seq_len": 65536, "micro_batch_size": 8}
    with pytest.raises(ClusterError) as e:
        P.plan_fleet(_fleet([wide]))
    msg = str(e.value)
    assert msg.startswith("model w: does not fit on a A10G-24GB (22.5 GiB) at any node count: ")
    assert "at micro_batch_size=8, seq_len=65536; lower them or set activation_checkpointing: true" in msg


def test_plan_fleet_exact_misfit_messages() -> None:
    from mltrain.cluster.catalog import get_instance

    fleet = _fleet([{**M2, "name": "w", "seq_len": 65536, "micro_batch_size": 8}])
    mem = P.memory_per_gpu_gib(P.model_shape(fleet.models[0]), 10**9, 8, 65536, False)
    with pytest.raises(ClusterError) as e:
        P.plan_fleet(fleet)
    assert str(e.value) == (
        f"model w: does not fit on a A10G-24GB (22.5 GiB) at any node count: {mem['total']:.1f} GiB/GPU even fully "
        f"sharded (activations {mem['activations']:.1f}, logits {mem['logits']:.1f}, working set {mem['working']:.1f}) "
        "at micro_batch_size=8, seq_len=65536; lower them or set activation_checkpointing: true"
    )
    huge = {**M1, "name": "h", "params": 4e11, "n_layers": 1000, "hidden_size": 1024, "activation_checkpointing": True}
    fleet = _fleet([huge])
    shape = P.model_shape(fleet.models[0])
    fit = P.min_nodes_to_fit(shape, get_instance("g5.48xlarge"), 1, 1024, True)
    mem = P.memory_per_gpu_gib(shape, 80, 1, 1024, True)
    with pytest.raises(ClusterError) as e:
        P.plan_fleet(fleet)
    assert str(e.value) == (
        f"model h: needs {fit} nodes to fit in memory ({mem['total']:.1f} GiB/GPU on all 10 nodes, GPU has 22.5), "
        "the cluster has 10"
    )
    # exactly as many nodes as it needs: fine
    plan = P.plan_fleet(_fleet([huge], nodes=fit))
    assert plan.models[0].nodes == fit == plan.models[0].min_nodes_fit


def test_plan_fleet_bounds_that_just_hold() -> None:
    assert [m.nodes for m in P.plan_fleet(_fleet([{**M1, "min_nodes": 5, "max_nodes": 5}])).models] == [5]
    assert [m.nodes for m in P.plan_fleet(_fleet([{**M1, "min_nodes": 5}, {**M2, "min_nodes": 5}])).models] == [5, 5]
    assert [m.nodes for m in P.plan_fleet(_fleet([M1], constraints={"node_granularity": 10})).models] == [10]


def test_plan_fleet_deadline_rounding() -> None:
    days = P.plan_fleet(_fleet([M1])).models[0].node_days_work
    # exactly 4 nodes' worth: 4 may do it
    plan = P.plan_fleet(_fleet([{**M1, "deadline_days": days / 4, "max_nodes": 4}]))
    assert plan.models[0].nodes == 4
    # a hair more than 4 nodes' worth: 5 needed, 4 allowed
    with pytest.raises(ClusterError, match="needs 5 nodes to train"):
        P.plan_fleet(_fleet([{**M1, "deadline_days": days / 4.00001, "max_nodes": 4}]))


def test_plan_fleet_uses_the_assumptions_given_and_the_instance_notes() -> None:
    a = P.Assumptions(overhead_gib=18.0)
    plan = P.plan_fleet(_fleet([M1]), a)
    shape = P.model_shape(_fleet([M1]).models[0])
    from mltrain.cluster.catalog import get_instance

    assert plan.models[0].min_nodes_fit == P.min_nodes_to_fit(shape, get_instance("g5.48xlarge"), 1, 1024, a=a)
    assert plan.models[0].min_nodes_fit > P.plan_fleet(_fleet([M1])).models[0].min_nodes_fit
    assert plan.assumptions["overhead_gib"] == 18.0
    trn = P.plan_fleet(_fleet([M2], cluster={"instance_type": "trn1.32xlarge", "nodes": 2, "region": "us-east-1"}))
    assert trn.notes[0] == (
        "trn1.32xlarge: Neuron SDK, not CUDA: the mltrain trainer does not run here; listed for planning only."
    )
