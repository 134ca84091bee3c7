"""Instance catalog: the data file parses, the numbers the planner relies on, near-name suggestions."""

from __future__ import annotations

import pytest

from mltrain.cluster.catalog import get_instance, instance_names, load_catalog, suggest
from mltrain.errors import ClusterError

REQUIRED = ["p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5e.48xlarge", "p5en.48xlarge", "trn1.32xlarge"]
REQUIRED += [
    f"g5.{s}" for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")
]
REQUIRED += [
    f"g6e.{s}" for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge")
]


def test_catalog_has_every_required_type():
    assert set(REQUIRED) <= set(load_catalog())
    assert instance_names() == sorted(instance_names())


def test_seed_instance_numbers():
    p5e = get_instance("p5e.48xlarge")
    assert (p5e.accelerators, p5e.accelerator, p5e.vcpus, p5e.memory_gib) == (8, "H200-141GB", 192, 2048)
    assert p5e.peak_bf16_tflops == pytest.approx(989.4)
    assert p5e.efa and p5e.efa_interfaces == 32 and p5e.network_gbps == 3200
    # the seed: $2,768/hour for 80 nodes
    assert p5e.price("ap-southeast-3") * 80 == pytest.approx(2768.0)
    assert p5e.price("eu-north-1") is None and p5e.price(None) is None


@pytest.mark.parametrize(
    "name, accel, tflops",
    [
        ("p5.48xlarge", 8, 989.4),
        ("p4d.24xlarge", 8, 312),
        ("g5.48xlarge", 8, 70),
        ("g6e.12xlarge", 4, 362.05),
        ("trn1.32xlarge", 16, 190),
    ],
)
def test_peaks_and_counts(name, accel, tflops):
    it = get_instance(name)
    assert it.accelerators == accel
    assert it.peak_flops == pytest.approx(tflops * 1e12)


def test_efa_support_matches_aws():
    # g5: EFA from 8xlarge up; the small sizes have none
    assert not get_instance("g5.xlarge").efa and not get_instance("g5.4xlarge").efa
    assert get_instance("g5.8xlarge").efa and get_instance("g5.48xlarge").efa
    assert not get_instance("g6e.4xlarge").efa and get_instance("g6e.48xlarge").efa_interfaces == 4


def test_lookup_is_tolerant_of_case_and_spaces():
    assert get_instance(" P5E.48XLARGE ").name == "p5e.48xlarge"


@pytest.mark.parametrize(
    "bad, expect", [("p5e.48xl", "p5e.48xlarge"), ("g5.96xlarge", "g5."), ("p5-48xlarge", "p5.48xlarge")]
)
def test_unknown_type_suggests_near_names(bad, expect):
    with pytest.raises(ClusterError) as e:
        get_instance(bad)
    msg = str(e.value)
    assert f"unknown instance type {bad!r}" in msg and "did you mean" in msg and expect in msg
    assert "\n" not in msg


def test_unknown_type_without_near_name_lists_the_catalog():
    with pytest.raises(ClusterError, match="known: g5.12xlarge"):
        get_instance("zzzz")
    assert suggest("zzzz", ["a.b"]) == ""
