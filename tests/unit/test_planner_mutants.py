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
