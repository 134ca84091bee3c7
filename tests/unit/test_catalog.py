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


# --------------------------------------------------------------------------- a type the catalog lacks: the user's own entry

from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from mltrain.cluster.catalog import InstanceType  # noqa: E402
from mltrain.errors import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
B300 = {"accelerators": 8, "accelerator": "B300", "gpu_memory_gib": 268, "vcpus": 192, "memory_gib": 2048,
        "network_gbps": 6400, "efa_interfaces": 16, "gpudirect_rdma": True, "peak_bf16_tflops": 2000.0}  # fmt: skip


def test_user_entries_come_first_and_take_their_key_as_name():
    mine = {"P6-B300.48xlarge": InstanceType.model_validate(B300), "p5.48xlarge": InstanceType.model_validate(B300)}
    got = get_instance("p6-b300.48xlarge", mine)
    assert got.name == "p6-b300.48xlarge" and got.accelerator == "B300" and got.efa
    assert get_instance("p5.48xlarge", mine).accelerator == "B300"  # the user's figures over the shipped ones
    assert get_instance("p5.48xlarge").accelerator != "B300"


def test_unknown_type_names_no_package_path():
    with pytest.raises(ClusterError) as e:
        get_instance("p6-b300.48xlarge")
    msg = str(e.value)
    assert "catalog.yaml" not in msg and "site-packages" not in msg and "mltrain/cluster" not in msg
    assert "instance_types:" in msg and "fleet file or cluster spec" in msg


def _spec(tmp_path: Path, **itype) -> Path:
    spec = yaml.safe_load((ROOT / "configs" / "clusters" / "p5-16.yaml").read_text())
    spec["instance_type"] = "p6-b300.48xlarge"
    spec["instance_types"] = {"p6-b300.48xlarge": {**B300, **itype}}
    path = tmp_path / "b300.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_cluster_spec_instance_types_render_and_submit_check(tmp_path):
    from mltrain.cluster.pcluster import render
    from mltrain.cluster.spec import load_cluster_spec
    from mltrain.launch.slurm import check_instance_type

    spec = load_cluster_spec(_spec(tmp_path))
    config = render(spec)
    (queue,) = config["Scheduling"]["SlurmQueues"]
    (cr,) = queue["ComputeResources"]
    assert cr["InstanceType"] == "p6-b300.48xlarge"
    assert cr["Efa"] == {"Enabled": True, "GdrSupport": True}
    check_instance_type(spec)  # `mltrain submit` takes it too
    spec.instance_types.clear()
    with pytest.raises(ConfigError, match="unknown instance type 'p6-b300.48xlarge'.*instance_types:"):
        check_instance_type(spec)


def test_cluster_spec_instance_types_are_strict(tmp_path):
    from mltrain.cluster.spec import load_cluster_spec

    with pytest.raises(ConfigError, match=r"instance_types\.p6-b300\.48xlarge\.gpus: unknown key"):
        load_cluster_spec(_spec(tmp_path, gpus=8))
