"""The EKS cluster spec: bad input is one clear line naming the file and key, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from tests.helpers import mltrain_cmd

from mltrain.cluster.spec import EksSpec, load_cluster_spec, load_eks_spec
from mltrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EKS = ROOT / "configs" / "clusters" / "eks-p5-2.yaml"
RUN = ROOT / "configs" / "qwen2.5-0.5b.yaml"


def _write_spec(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(EKS.read_text())
    for key, value in changes.items():
        node = data
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = tmp_path / "eks.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _render(spec: Path, run: Path = RUN) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        mltrain_cmd("k8s", "render", str(run), "--cluster", str(spec)),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        ({"gpus_per_node": 0, "efa_per_node": 0}, "gpus_per_node: 0 GPUs per node, but run qwen2.5-0.5b trains on GPU"),
        ({"storage.pvc_name": None}, "storage.pvc_name: required key is missing"),
        ({"nproc_per_node": 16}, "nproc_per_node: 16 processes per node but only gpus_per_node=8 GPUs"),
        (
            {"image": "/fsx/images/mltrain.sqsh"},
            "image: '/fsx/images/mltrain.sqsh' is not a registry reference",
        ),
    ],
    ids=["no-gpus", "no-pvc", "nproc-over-gpus", "sqsh-image"],
)
def test_bad_spec_is_one_line(tmp_path: Path, changes: dict, expect: str) -> None:
    spec = _write_spec(tmp_path, **changes)
    p = _render(spec)
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"error: {spec}: ") and expect in lines[0], lines[0]


def test_slurm_spec_given_to_k8s_is_one_line() -> None:
    p = _render(ROOT / "configs" / "clusters" / "p5-16.yaml")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "kind: None is not 'eks'" in p.stderr


def test_cpu_run_on_cpu_nodes_is_fine(tmp_path: Path) -> None:
    spec = load_eks_spec(_write_spec(tmp_path, gpus_per_node=0, efa_per_node=0, instance_type="m7i.48xlarge"))
    assert spec.procs_per_node == 1
    from mltrain.config import load_run_config
    from mltrain.launch.k8s.manifests import render

    cfg = load_run_config(RUN, ["train.device=cpu"])
    pod = render(cfg, spec).job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert "limits" not in pod["containers"][0]["resources"]
    assert not [e for e in pod["containers"][0]["env"] if e["name"].startswith(("NCCL_", "FI_"))]


@pytest.mark.parametrize(
    "image",
    [
        "123456789012.dkr.ecr.us-east-1.amazonaws.com/mltrain:0.1.0",
        "nvcr.io/nvidia/pytorch:24.10-py3",
        "localhost:5000/team/mltrain",
        "ubuntu",
        "public.ecr.aws/x/mltrain@sha256:" + "a" * 64,
    ],
)
def test_registry_references_accepted(image: str) -> None:
    data = yaml.safe_load(EKS.read_text())
    assert EksSpec.model_validate({**data, "image": image}).image == image


@pytest.mark.parametrize("image", ["docker://nvcr.io/nvidia/pytorch:24.10", "./mltrain.sqsh", "MLTrain:latest", "a b"])
def test_not_registry_references_rejected(image: str) -> None:
    data = yaml.safe_load(EKS.read_text())
    with pytest.raises(ValueError, match="not a registry reference"):
        EksSpec.model_validate({**data, "image": image})


def test_existing_slurm_specs_still_load() -> None:
    for path in (ROOT / "configs" / "clusters").glob("*.yaml"):
        if path.name.startswith("eks-"):
            with pytest.raises(ConfigError, match="is an EKS spec; this command takes a cluster spec"):
                load_cluster_spec(path)
        else:
            load_cluster_spec(path)


def test_run_base_dir_must_be_on_the_pvc(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run_base_dir /scratch/mltrain is not under mount_path /fsx"):
        load_eks_spec(_write_spec(tmp_path, **{"storage.run_base_dir": "/scratch/mltrain"}))


def test_efa_instance_without_efa_devices_warns(tmp_path: Path) -> None:
    from mltrain.config import load_run_config
    from mltrain.launch.k8s.manifests import render

    spec = load_eks_spec(_write_spec(tmp_path, efa_per_node=0))
    r = render(load_run_config(RUN), spec)
    assert any("has EFA but efa_per_node is 0" in w for w in r.warnings)


def test_bad_toleration_is_one_line(tmp_path: Path) -> None:
    spec = _write_spec(tmp_path, tolerations=[{"key": "x", "operator": "Exists", "tolerationSeconds": 5}])
    p = _render(spec)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "tolerations.0.tolerationSeconds: unknown key" in p.stderr


def test_missing_k8s_extra_is_one_line(monkeypatch) -> None:
    from mltrain.config import load_run_config
    from mltrain.launch.k8s import manifests

    monkeypatch.setattr(manifests, "_missing", lambda m: m == "kubeflow_trainer_api")
    with pytest.raises(ConfigError, match=r"needs kubeflow_trainer_api: pip install 'mltrain\[k8s\]'"):
        manifests.render(load_run_config(RUN), load_eks_spec(EKS), "trainjob")
