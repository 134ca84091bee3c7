"""The Kubernetes manifests mltrain renders: golden files for the shipped EKS spec, validation against the
Kubeflow CRD schemas (jsonschema, vendored in tests/data/k8s/) and the core pod/job schemas
(kubernetes-validate), and the recovery/scheduling pieces (restart budget, exit-code policy, Kueue and pod
groups, anti-affinity for failed nodes).

Regenerate the golden files after an intended change:  UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/test_k8s_render.py
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from tests.helpers import mltrain_cmd, strict_schema

from mltrain.cluster.spec import EksSpec, load_eks_spec
from mltrain.config import load_run_config
from mltrain.launch import nccl_env
from mltrain.launch.k8s import manifests as mf
from mltrain.launch.k8s import policy

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "k8s"
SCHEMAS = ROOT / "tests" / "data" / "k8s"
EKS_SPECS = sorted((ROOT / "configs" / "clusters").glob("eks-*.yaml"))
RUN = ROOT / "configs" / "qwen2.5-0.5b.yaml"


def _crd_validator(name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / f"{name}.crd-schema.json").read_text())
    schema.pop("$comment")
    return jsonschema.Draft7Validator(strict_schema(schema))


def _errors(validator: jsonschema.Draft7Validator, obj: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def _core_validate(obj: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def _spec(**changes) -> EksSpec:
    data = yaml.safe_load((ROOT / "configs" / "clusters" / "eks-p5-2.yaml").read_text())
    for k, v in changes.items():
        data[k] = v
    return EksSpec.model_validate(data)


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{path} differs from the rendered manifests (UPDATE_GOLDEN=1 to accept)"


def _pod(obj: dict) -> dict:
    if obj["kind"] == "PyTorchJob":
        return obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    return obj["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]


@pytest.mark.parametrize("kind", mf.KINDS)
@pytest.mark.parametrize("spec_path", EKS_SPECS, ids=lambda p: p.stem)
def test_golden_shipped_specs(spec_path: Path, kind: str) -> None:
    r = mf.render(load_run_config(RUN), load_eks_spec(spec_path), kind)
    _golden(f"{spec_path.stem}.{kind}.yaml", r.to_yaml())


@pytest.mark.parametrize("spec_path", EKS_SPECS, ids=lambda p: p.stem)
def test_pytorchjob_valid_against_crd_and_core_schemas(spec_path: Path) -> None:
    r = mf.render(load_run_config(RUN), load_eks_spec(spec_path), "pytorchjob")
    assert [o["kind"] for o in r.objects] == ["PyTorchJob"]
    assert _errors(_crd_validator("pytorchjob"), r.job) == []
    for rtype, replica in r.job["spec"]["pytorchReplicaSpecs"].items():
        tmpl = replica["template"]
        _core_validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"x-{rtype.lower()}"}, **tmpl})


@pytest.mark.parametrize("spec_path", EKS_SPECS, ids=lambda p: p.stem)
def test_trainjob_valid_against_crd_and_core_schemas(spec_path: Path) -> None:
    r = mf.render(load_run_config(RUN), load_eks_spec(spec_path), "trainjob")
    runtime, job = r.objects
    assert (runtime["kind"], job["kind"]) == ("TrainingRuntime", "TrainJob")
    assert _errors(_crd_validator("trainjob"), job) == []
    assert job["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "TrainingRuntime",
        "name": runtime["metadata"]["name"],
    }
    # no CRD for TrainingRuntime in the test data: its Job template is a core batch/v1 Job
    rj = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]
    _core_validate({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": rj["template"]["spec"]})


def test_crd_schema_catches_a_wrong_field() -> None:
    """The schema check can fail: a misspelt or mistyped field is reported."""
    r = mf.render(load_run_config(RUN), _spec(), "pytorchjob")
    bad = copy.deepcopy(r.job)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicyy"] = "ExitCode"
    bad["spec"]["runPolicy"]["backoffLimit"] = "five"
    errs = _errors(_crd_validator("pytorchjob"), bad)
    assert any("restartPolicyy" in e for e in errs) and any("backoffLimit" in e for e in errs)
    tj = copy.deepcopy(mf.render(load_run_config(RUN), _spec(), "trainjob").job)
    tj["spec"]["trainer"]["numNodes"] = "2"
    assert any("numNodes" in e for e in _errors(_crd_validator("trainjob"), tj))


@pytest.mark.parametrize("kind", mf.KINDS)
def test_pod_gpus_efa_shm_pvc_and_nccl_env_from_the_slurm_table(kind: str) -> None:
    cfg, spec = load_run_config(RUN), _spec()
    r = mf.render(cfg, spec, kind)
    pod = _pod(r.job if kind == "pytorchjob" else r.objects[0])["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "8", "vpc.amazonaws.com/efa": "32"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MLTRAIN_NPROC_PER_NODE"] == "8" and env["MLTRAIN_MAX_RESTARTS"] == str(cfg.launch.max_restarts)
    assert env["MLTRAIN_RUN_DIR"] == "/fsx/mltrain/runs/qwen2.5-0.5b"
    assert yaml.safe_load(env["MLTRAIN_RUN_CONFIG"])["base_dir"] == "/fsx/mltrain"
    # one source of truth: every variable of the Slurm launcher's table, same value, run dir as a k8s reference
    for v in nccl_env.default_env("p5.48xlarge", "$(MLTRAIN_RUN_DIR)"):
        assert env[v.name] == v.value
    assert env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"].startswith("$(MLTRAIN_RUN_DIR)/")
    names = [e["name"] for e in c["env"]]
    assert names.index("MLTRAIN_RUN_DIR") < names.index("TORCH_NCCL_DEBUG_INFO_TEMP_FILE")  # $(VAR) needs it first
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Gi"}
    assert vols["fsx"]["persistentVolumeClaim"] == {"claimName": "fsx-lustre"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"dshm": "/dev/shm", "fsx": "/fsx"}
    assert pod["nodeSelector"]["node.kubernetes.io/instance-type"] == "p5.48xlarge"
    assert pod["terminationGracePeriodSeconds"] == cfg.launch.requeue_grace_s
    assert c["command"] == mf.ENTRYPOINT


def test_pytorchjob_restart_policy_budget_and_kueue() -> None:
    cfg, spec = load_run_config(RUN), _spec()
    job = mf.render(cfg, spec, "pytorchjob").job
    reps = job["spec"]["pytorchReplicaSpecs"]
    assert reps["Master"]["replicas"] == 1 and reps["Worker"]["replicas"] == spec.nodes - 1
    assert {r["restartPolicy"] for r in reps.values()} == {"ExitCode"}
    assert job["spec"]["nprocPerNode"] == "8"
    assert job["spec"]["runPolicy"]["backoffLimit"] == cfg.launch.max_restarts == 5
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "training"
    assert "schedulingPolicy" not in job["spec"]["runPolicy"]  # Kueue gangs it; no PodGroup too
    assert reps["Master"]["template"]["spec"]["containers"][0]["ports"][0]["name"] == "pytorchjob-port"
    # one node: no Worker replica
    one = mf.render(cfg, _spec(nodes=1, max_nodes=None), "pytorchjob").job
    assert list(one["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_exit_code_mapping_matches_the_operator_and_jobset_policies() -> None:
    """Restartable reasons are >= 128 (training-operator ExitCode policy), permanent ones below."""
    assert policy.EXIT_PREEMPTED == 128 + 75 and policy.EXIT_HANG == 128 + 76
    for code in (policy.EXIT_PREEMPTED, policy.EXIT_HANG, policy.EXIT_FAILED):
        assert code >= policy.RETRYABLE_BASE
    for code in policy.PERMANENT_EXIT_CODES:
        assert 0 < code < policy.RETRYABLE_BASE
    runtime = mf.render(load_run_config(RUN), _spec(), "trainjob").objects[0]
    js = runtime["spec"]["template"]["spec"]
    assert js["failurePolicy"]["maxRestarts"] == 5
    assert js["failurePolicy"]["rules"][0]["action"] == "FailJobSet"
    rules = js["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "node", "operator": "In", "values": [1, 2]},
    }
    assert rules[1]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [203]
    assert js["replicatedJobs"][0]["template"]["metadata"]["labels"][mf.TRAINER_ANCESTOR_LABEL] == "trainer"


def test_pod_group_when_no_kueue() -> None:
    spec = _spec(scheduling={"pod_group": "volcano", "schedule_timeout_s": 300})
    job = mf.render(load_run_config(RUN), spec, "pytorchjob").job
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2, "scheduleTimeoutSeconds": 300}
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["schedulerName"] == "volcano"
    assert _errors(_crd_validator("pytorchjob"), job) == []
    spec = _spec(scheduling={"pod_group": "coscheduling"})
    runtime = mf.render(load_run_config(RUN), spec, "trainjob").objects[0]
    assert runtime["spec"]["podGroupPolicy"] == {"coscheduling": {"scheduleTimeoutSeconds": 600}}
    r = mf.render(load_run_config(RUN), _spec(scheduling={}), "pytorchjob")
    assert any("no gang scheduling" in w for w in r.warnings)


def _restarts(run_dir: Path, nodes: list[str]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [{"cause": "hang", "node": n, "action": "requeue", "counted": True} for n in nodes]
    lines.append({"cause": "preempted", "node": "", "action": "requeue", "counted": False})
    (run_dir / "restarts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_anti_affinity_for_failed_nodes(tmp_path: Path) -> None:
    cfg = load_run_config(RUN)
    run_dir = tmp_path / "runs" / cfg.name
    _restarts(run_dir, ["ip-10-0-1-7.ec2.internal", "ip-10-0-1-7.ec2.internal"])
    spec = _spec(storage={"pvc_name": "fsx-lustre", "local_run_base_dir": str(tmp_path)})
    assert mf.local_run_dir(cfg, spec) == run_dir
    r = mf.render(cfg, spec, "pytorchjob", run_dir_local=mf.local_run_dir(cfg, spec))
    aff = _pod(r.job)["spec"]["affinity"]["nodeAffinity"]
    term = aff["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
    assert term["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["ip-10-0-1-7.ec2.internal"]}
    ]
    assert _errors(_crd_validator("pytorchjob"), r.job) == [] and not r.warnings
    # two failed nodes, one spare: required would leave the job pending forever -> preferred + a warning
    _restarts(run_dir, ["ip-a", "ip-b"])
    r = mf.render(cfg, spec, "trainjob", run_dir_local=run_dir)
    aff = _pod(r.objects[0])["spec"]["affinity"]["nodeAffinity"]
    assert aff["preferredDuringSchedulingIgnoredDuringExecution"][0]["preference"]["matchExpressions"][0]["values"] == [
        "ip-a",
        "ip-b",
    ]
    assert any("no spare" in w for w in r.warnings)
    # switched off, or nothing failed: no affinity at all
    off = spec.model_copy(update={"exclude_failed_nodes": False})
    assert "affinity" not in _pod(mf.render(cfg, off, "pytorchjob", run_dir_local=run_dir).job)["spec"]
    assert "affinity" not in _pod(mf.render(cfg, spec, "pytorchjob", run_dir_local=None).job)["spec"]


def test_job_name_is_dns_safe() -> None:
    assert mf.job_name("Qwen2.5_0.5B-run") == "qwen2-5-0-5b-run"
    assert len(mf.job_name("x" * 100)) == 40


def test_cli_render_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "job.yaml"
    p = subprocess.run(
        mltrain_cmd("k8s", "render", str(RUN), "--cluster", str(EKS_SPECS[0]), "--kind", "trainjob", "-o", str(out)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["TrainingRuntime", "TrainJob"]
    assert docs[1]["spec"]["trainer"]["numProcPerNode"] == 8 and docs[1]["spec"]["trainer"]["numNodes"] == 2


# --------------------------------------------------------------------------- pinned without the golden files
# Each value below is computed from the spec here, not read from a golden file that UPDATE_GOLDEN=1 rebakes.


@pytest.mark.parametrize("nodes", [1, 2, 7])
def test_node_counts_for_one_two_and_n_nodes(nodes: int) -> None:
    cfg = load_run_config(RUN)
    spec = _spec(nodes=nodes, max_nodes=nodes + 1)
    runtime, tj = mf.render(cfg, spec, "trainjob").objects
    assert tj["spec"]["trainer"]["numNodes"] == nodes
    assert runtime["spec"]["mlPolicy"] == {"numNodes": nodes, "torch": {}}
    assert tj["spec"]["trainer"]["numProcPerNode"] == spec.procs_per_node == 8
    (rj,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert rj["replicas"] == 1  # one replicated Job; the trainer sets its parallelism from numNodes
    pj = mf.render(cfg, spec, "pytorchjob").job
    reps = pj["spec"]["pytorchReplicaSpecs"]
    assert reps["Master"]["replicas"] == 1
    if nodes == 1:
        assert "Worker" not in reps
    else:
        assert reps["Worker"]["replicas"] == nodes - 1
    assert sum(r["replicas"] for r in reps.values()) == nodes
    assert pj["spec"]["nprocPerNode"] == "8"
    # a PodGroup gangs every pod of the job
    gang = _spec(nodes=nodes, max_nodes=nodes, scheduling={"pod_group": "volcano"})
    pj = mf.render(cfg, gang, "pytorchjob").job
    assert pj["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == nodes
    # the no-gang warning only where there is more than one pod to gang
    warned = any(
        "no gang scheduling" in w
        for w in mf.render(cfg, _spec(nodes=nodes, max_nodes=nodes, scheduling={}), "trainjob").warnings
    )
    assert warned is (nodes > 1)


@pytest.mark.parametrize("kind", mf.KINDS)
def test_procs_per_node_follows_nproc_per_node(kind: str) -> None:
    spec = _spec(nproc_per_node=4)
    r = mf.render(load_run_config(RUN), spec, kind)
    pod = _pod(r.job if kind == "pytorchjob" else r.objects[0])["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MLTRAIN_NPROC_PER_NODE"] == "4"
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"  # the pod still gets the node
    if kind == "pytorchjob":
        assert r.job["spec"]["nprocPerNode"] == "4"
    else:
        assert r.job["spec"]["trainer"]["numProcPerNode"] == 4


def test_metadata_names_labels_and_annotations() -> None:
    cfg, spec = load_run_config(RUN), _spec()
    pj = mf.render(cfg, spec, "pytorchjob").job
    assert (pj["apiVersion"], pj["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert pj["metadata"]["name"] == "qwen2-5-0-5b" and pj["metadata"]["namespace"] == "mltrain"
    assert pj["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "mltrain",
        "mltrain.io/run": "qwen2-5-0-5b",
        "kueue.x-k8s.io/queue-name": "training",
    }
    assert pj["metadata"]["annotations"] == {"mltrain.io/exit-codes": policy.exit_code_table()}
    assert pj["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    runtime, tj = mf.render(cfg, spec, "trainjob").objects
    assert (runtime["apiVersion"], runtime["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime")
    assert (tj["apiVersion"], tj["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert runtime["metadata"]["name"] == "mltrain-qwen2-5-0-5b" and runtime["metadata"]["namespace"] == "mltrain"
    # the runtime is not a workload: no queue label (Kueue admits the TrainJob)
    assert runtime["metadata"]["labels"] == {
        "trainer.kubeflow.org/framework": "torch",
        "app.kubernetes.io/managed-by": "mltrain",
    }
    assert tj["metadata"]["labels"] == pj["metadata"]["labels"] and tj["metadata"]["name"] == "qwen2-5-0-5b"
    assert tj["spec"]["trainer"]["image"] == spec.image and tj["spec"]["trainer"]["command"] == mf.ENTRYPOINT
    pod = _pod(runtime)["spec"]
    assert tj["spec"]["trainer"]["resourcesPerNode"] == pod["containers"][0]["resources"]


@pytest.mark.parametrize("kind", mf.KINDS)
def test_pod_fields_pinned(kind: str) -> None:
    cfg, spec = load_run_config(RUN), _spec(rdzv_port=29777, service_account="trainer-sa")
    r = mf.render(cfg, spec, kind, job_id="job-42")
    pod = _pod(r.job if kind == "pytorchjob" else r.objects[0])["spec"]
    (c,) = pod["containers"]
    assert c["name"] == ("pytorch" if kind == "pytorchjob" else "node")
    assert c["ports"] == [
        {"containerPort": 29777, "name": "pytorchjob-port" if kind == "pytorchjob" else "rdzv", "protocol": "TCP"}
    ]
    env = {e["name"]: e for e in c["env"]}
    assert env["MLTRAIN_RDZV_PORT"]["value"] == "29777" and env["MLTRAIN_JOB_ID"]["value"] == "job-42"
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert c["image"] == spec.image and c["imagePullPolicy"] == spec.image_pull_policy
    assert c["securityContext"] == {"capabilities": {"add": ["IPC_LOCK"]}}
    assert c["resources"]["requests"] == {
        "nvidia.com/gpu": "8",
        "vpc.amazonaws.com/efa": "32",
        "cpu": "180",
        "memory": "1800Gi",
    }
    assert pod["serviceAccountName"] == "trainer-sa"
    assert pod.get("restartPolicy") == (None if kind == "pytorchjob" else "Never")
    assert "schedulerName" not in pod  # Kueue: the default scheduler
    default_id = mf.render(cfg, _spec(), kind)
    pod = _pod(default_id.job if kind == "pytorchjob" else default_id.objects[0])["spec"]
    assert {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}["MLTRAIN_JOB_ID"] == "qwen2-5-0-5b"


def test_trainjob_failure_policy_pinned() -> None:
    runtime = mf.render(load_run_config(RUN), _spec(), "trainjob").objects[0]
    js = runtime["spec"]["template"]["spec"]
    assert js["failurePolicy"]["rules"] == [
        {"name": "never-restart-config-errors", "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}
    ]
    job = js["replicatedJobs"][0]["template"]["spec"]
    assert js["replicatedJobs"][0]["name"] == "node" and job["backoffLimit"] == 0
    assert job["podFailurePolicy"]["rules"][1:] == [
        {"action": "Ignore", "onExitCodes": {"containerName": "node", "operator": "In", "values": [203]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    assert "podGroupPolicy" not in runtime["spec"]  # Kueue gangs it


def test_scheduler_names_for_pod_groups() -> None:
    cfg = load_run_config(RUN)
    for group, scheduler in [("volcano", "volcano"), ("coscheduling", "scheduler-plugins-scheduler")]:
        spec = _spec(scheduling={"pod_group": group, "priority_class": "high"})
        for kind in mf.KINDS:
            r = mf.render(cfg, spec, kind)
            pod = _pod(r.job if kind == "pytorchjob" else r.objects[0])["spec"]
            assert pod["schedulerName"] == scheduler and pod["priorityClassName"] == "high", (group, kind)
    runtime = mf.render(cfg, _spec(scheduling={"pod_group": "volcano"}), "trainjob").objects[0]
    assert runtime["spec"]["podGroupPolicy"] == {"volcano": {}}
    pj = mf.render(cfg, _spec(scheduling={"pod_group": "volcano", "priority_class": "high"}), "pytorchjob").job
    assert pj["spec"]["runPolicy"]["schedulingPolicy"]["priorityClass"] == "high"
    # Kueue and a pod group together: Kueue gangs, no second scheduler
    both = _spec(scheduling={"pod_group": "volcano", "kueue_queue": "q"})
    pj = mf.render(cfg, both, "pytorchjob").job
    assert "schedulingPolicy" not in pj["spec"]["runPolicy"] and "schedulerName" not in _pod(pj)["spec"]


def test_render_refuses_an_unknown_kind() -> None:
    from mltrain.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--kind 'jobset': expected one of pytorchjob, trainjob"):
        mf.render(load_run_config(RUN), _spec(), "jobset")


def test_job_name_edges() -> None:
    assert mf.job_name("___") == "run"
    assert mf.job_name("A" * 39 + "_b") == "a" * 39  # cut at 40, trailing '-' dropped
    assert mf.job_name("-x-") == "x"


def test_exit_code_annotation_text_pinned() -> None:
    assert policy.exit_code_table() == (
        "0 done; 2 config_error (never restarted); 1 launch.max_restarts used up (never restarted); "
        "203 preempted (restart, not charged); 204 hang (restart); 129 failed or lost rank (restart)"
    )


def test_failed_node_without_max_nodes_is_only_preferred(tmp_path: Path) -> None:
    """max_nodes unset means no spare: one failed node of two can only be avoided where possible."""
    cfg = load_run_config(RUN)
    run_dir = tmp_path / "runs" / cfg.name
    _restarts(run_dir, ["ip-a", " ", "ip-a "])  # blanks are no node; names are stripped
    spec = _spec(max_nodes=None, storage={"pvc_name": "fsx-lustre", "local_run_base_dir": str(tmp_path)})
    r = mf.render(cfg, spec, "pytorchjob", run_dir_local=run_dir)
    aff = _pod(r.job)["spec"]["affinity"]["nodeAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in aff
    (pref,) = aff["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pref["weight"] == 100 and pref["preference"]["matchExpressions"][0]["values"] == ["ip-a"]
    assert any("1 failed node(s) but the node group has no spare (1 usable, 2 needed)" in w for w in r.warnings)
