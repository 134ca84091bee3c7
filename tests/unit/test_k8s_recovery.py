"""Recovery records on Kubernetes, against the fake API api_server of test_k8s_submit: a pod killed (exit 137), an
OOMKilled pod, an evicted pod and a node NotReady each count one restart with its cause, once however often
the job is polled; the trainer's own exits 75/76; the budget shared with the wrapper's records; the health
init container labels a failing node and the next render keeps the job off it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from tests.unit.test_k8s_render import _core_validate, _crd_validator, _errors, _golden, _pod
from tests.unit.test_k8s_submit import EKS, RUN, FakeApiServer, install_fake_api

from mltrain import runstats
from mltrain.config import load_run_config
from mltrain.fsutil import read_jsonl
from mltrain.launch.k8s import client as kc
from mltrain.launch.k8s import entrypoint, health_init, policy, recovery
from mltrain.launch.k8s import manifests as mf

JOB = "qwen2-5-0-5b"
NODES = "/api/v1/nodes"


@pytest.fixture
def api_server(monkeypatch) -> FakeApiServer:
    """test_k8s_submit's fake API server behind kc.api_client (its fixture, for this module)."""
    return install_fake_api(monkeypatch)


def _console() -> Console:
    return Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115


@pytest.fixture
def run(api_server: FakeApiServer, tmp_path: Path) -> tuple[Path, Path, str]:
    """(eks spec with the run dir mounted here, run dir, job id) after a submit; both nodes Ready."""
    spec = yaml.safe_load(EKS.read_text())
    spec["storage"]["local_run_base_dir"] = str(tmp_path)
    eks = tmp_path / "eks.yaml"
    eks.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "runs" / "qwen2.5-0.5b"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"max_steps": 1000}}))
    job_id = kc.submit(RUN, eks, "pytorchjob", [], console=_console())
    api_server.objects[f"/apis/kubeflow.org/v1/namespaces/mltrain/pytorchjobs/{JOB}"]["status"] = {
        "conditions": [
            {"type": "Created", "status": "True", "lastTransitionTime": "2026-11-30T10:00:00Z"},
            {"type": "Running", "status": "True", "lastTransitionTime": "2026-11-30T10:01:00Z"},
        ]
    }
    for n in ("ip-a", "ip-b"):
        api_server.objects[f"{NODES}/{n}"] = _node(n, "True")
    return eks, run_dir, job_id


def _node(name: str, ready: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {}},
        "status": {"conditions": [{"type": "Ready", "status": ready}]},
    }


def _pod_status(
    name: str,
    uid: str,
    node: str,
    job_id: str,
    *,
    phase: str = "Running",
    reason: str | None = None,
    state: dict | None = None,
    last: dict | None = None,
    restarts: int = 0,
    master: bool = True,
    max_restarts: int = 5,
) -> dict:
    labels = {"training.kubeflow.org/job-name": JOB}
    if master:
        labels["training.kubeflow.org/replica-type"] = "master"
    status: dict = {
        "phase": phase,
        "containerStatuses": [
            {
                "name": "pytorch",
                "image": "x",
                "imageID": "",
                "ready": phase == "Running",
                "restartCount": restarts,
                "state": state or {"running": {"startedAt": "2026-11-30T10:02:00Z"}},
                "lastState": {"terminated": last} if last else {},
            }
        ],
    }
    if reason:
        status["reason"] = reason
    env = [{"name": "MLTRAIN_JOB_ID", "value": job_id}, {"name": "MLTRAIN_MAX_RESTARTS", "value": str(max_restarts)}]
    return {
        "metadata": {"name": name, "uid": uid, "labels": labels, "creationTimestamp": "2026-11-30T10:00:00Z"},
        "spec": {"nodeName": node, "containers": [{"name": "pytorch", "env": env}]},
        "status": status,
    }


def _term(code: int, reason: str = "Error") -> dict:
    return {"exitCode": code, "reason": reason}


CASES = {
    # name: (pod status changes, node ip-b's Ready, cause, charged, node named)
    "killed-137": ({"phase": "Failed", "state": {"terminated": _term(137)}}, "True", "killed", True, "ip-b"),
    "oom-killed": (
        {"phase": "Failed", "state": {"terminated": _term(137, "OOMKilled")}},
        "True",
        "oom_killed",
        True,
        None,
    ),
    "evicted": (
        {"phase": "Failed", "reason": "Evicted", "state": {"terminated": _term(137)}},
        "True",
        "evicted",
        False,
        None,
    ),
    "node-not-ready": ({}, "Unknown", "node_failure", True, "ip-b"),
    "trainer-exit-75": ({"phase": "Failed", "state": {"terminated": _term(75)}}, "True", "preempted", False, None),
    "trainer-exit-76": ({"phase": "Failed", "state": {"terminated": _term(76)}}, "True", "hang", True, None),
    # a container restarted in place: the previous incarnation's end is in lastState
    "in-place-oom": ({"last": _term(137, "OOMKilled"), "restarts": 1}, "True", "oom_killed", True, None),
}


@pytest.mark.parametrize("case", CASES)
def test_each_failure_is_one_restart_with_its_cause(
    api_server: FakeApiServer, run: tuple[Path, Path, str], case: str
) -> None:
    eks, run_dir, job_id = run
    changes, ready, cause, counted, node = CASES[case]
    api_server.objects[f"{NODES}/ip-b"] = _node("ip-b", ready)
    api_server.pods = [
        _pod_status(f"{JOB}-master-0", "uid-m", "ip-b", job_id, **changes),
        _pod_status(f"{JOB}-worker-0", "uid-w", "ip-a", job_id, master=False),
    ]
    row = kc.status("qwen2.5-0.5b", eks, "pytorchjob", console=_console())
    (rec,) = read_jsonl(run_dir / "restarts.jsonl")
    assert (rec["cause"], rec["counted"], rec["node"]) == (cause, counted, node)
    assert rec["job_id"] == job_id and rec["action"] == "requeue" and rec["scheduler"] == "kubernetes"
    assert rec["pod"] == f"{JOB}-master-0" and rec["k8s_key"] == "uid-m/0"
    assert {"time", "attempt", "step", "failures", "resume_step"} <= rec.keys()
    assert runstats.count_restarts(read_jsonl(run_dir / "restarts.jsonl")) == 1
    assert row["restarts"] == "1" + (" (1p)" if cause == "preempted" else "")
    assert row["causes"] == f"restarts by cause: {cause} 1"
    assert policy.failures_so_far(run_dir, job_id) == (1 if counted else 0)
    # a node named by the record is kept out of the next render; OOM and evictions name none
    assert policy.failed_nodes(run_dir) == ([node] if node else [])
    # polled again (status, watch, mltrain status): nothing new
    kc.status("qwen2.5-0.5b", eks, "pytorchjob", console=_console())
    assert kc.watch("qwen2.5-0.5b", eks, "pytorchjob", 1, 1, console=_console()) == "Running"
    assert len(read_jsonl(run_dir / "restarts.jsonl")) == 1


def test_what_the_wrapper_recorded_is_not_recorded_again(
    api_server: FakeApiServer, run: tuple[Path, Path, str]
) -> None:
    """The wrapper's own exits (it decided; rank 0 recorded) and pods it recorded by uid are left alone."""
    eks, run_dir, job_id = run
    (run_dir / "restarts.jsonl").write_text(
        json.dumps({"job_id": job_id, "cause": "lost_rank", "action": "requeue", "counted": True, "pod_uid": "uid-m"})
        + "\n"
    )
    api_server.pods = [
        # the wrapper recorded this one (its uid), even though the container's reason says OOMKilled
        _pod_status(f"{JOB}-master-0", "uid-m", "ip-b", job_id, phase="Failed", state={"terminated": _term(137)}),
        # a worker whose torchrun lost its peer: the wrapper's code 129, the leader's record covers it
        _pod_status(
            f"{JOB}-worker-0", "uid-w", "ip-a", job_id, phase="Failed", master=False, state={"terminated": _term(129)}
        ),
        # evicted, but the wrapper outlived it: checkpointed and recorded as preempted (203)
        _pod_status(
            f"{JOB}-worker-1",
            "uid-w1",
            "ip-a",
            job_id,
            phase="Failed",
            reason="Evicted",
            master=False,
            state={"terminated": _term(policy.EXIT_PREEMPTED)},
        ),
    ]
    kc.status("qwen2.5-0.5b", eks, "pytorchjob", console=_console())
    assert len(read_jsonl(run_dir / "restarts.jsonl")) == 1


def _wrapper_env(tmp_path: Path, run_dir: Path, job_id: str, **extra: str) -> dict[str, str]:
    import os

    stub = tmp_path / "stub.py"
    stub.write_text(
        "import os, sys\n"
        "open(os.path.join(os.environ['MLTRAIN_RUN_DIR'], 'control', 'exit_reason'), 'w').write('hang')\n"
        "sys.exit(1)\n"
    )
    return {
        **os.environ,
        "MLTRAIN_RUN_DIR": str(run_dir),
        "MLTRAIN_JOB_ID": job_id,
        "MLTRAIN_MAX_RESTARTS": "2",
        "MLTRAIN_RUN_CONFIG": "name: qwen2.5-0.5b\nmodel: {preset: tiny}\n",
        "MLTRAIN_TORCHRUN": f"{sys.executable} {stub}",
        "PET_NODE_RANK": "0",
        "NODE_NAME": "ip-a",
        "POD_NAME": f"{JOB}-master-0",
        "POD_UID": "uid-hang",
        **extra,
    }


def test_budget_is_shared_with_the_wrappers_records(
    api_server: FakeApiServer, run: tuple[Path, Path, str], tmp_path: Path
) -> None:
    eks, run_dir, job_id = run
    env = _wrapper_env(tmp_path, run_dir, job_id)
    assert entrypoint.main(env) == policy.EXIT_HANG  # the wrapper's hang: charged 1 of 2
    assert recovery.budget(run_dir, job_id, 2).words() == f"restart budget: 1 of 2 charged (job {job_id})"
    (hang,) = read_jsonl(run_dir / "restarts.jsonl")
    assert hang["pod_uid"] == "uid-hang"
    hang_pod = _pod_status(
        f"{JOB}-master-0",
        "uid-hang",
        "ip-a",
        job_id,
        phase="Failed",
        state={"terminated": _term(policy.EXIT_HANG)},
        max_restarts=2,
    )
    killed = _pod_status(
        f"{JOB}-master-0", "uid-k", "ip-b", job_id, phase="Failed", state={"terminated": _term(137)}, max_restarts=2
    )
    api_server.pods = [hang_pod, killed]
    row = kc.status("qwen2.5-0.5b", eks, "pytorchjob", console=_console())
    recs = read_jsonl(run_dir / "restarts.jsonl")
    assert [(r["cause"], r["action"], r["failures"]) for r in recs] == [
        ("hang", "requeue", 1),
        ("killed", "requeue", 2),
    ]
    # both restarts used: the next charged failure gives up (policy.decide's rule)
    assert row["budget"] == f"restart budget used up: 2 of 2 charged (job {job_id})" and row["budget_exhausted"]
    # one more charged failure: past the budget, recorded as give_up
    oom = _pod_status(
        f"{JOB}-master-0",
        "uid-o",
        "ip-a",
        job_id,
        phase="Failed",
        state={"terminated": _term(137, "OOMKilled")},
        max_restarts=2,
    )
    api_server.pods = [hang_pod, killed, oom]
    con = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    row = kc.status("qwen2.5-0.5b", eks, "pytorchjob", console=con)
    assert read_jsonl(run_dir / "restarts.jsonl")[-1]["action"] == "give_up"
    assert "restart budget used up: 2 of 2 charged" in con.export_text()
    assert row["causes"] == "restarts by cause: hang 1, killed 1, oom_killed 1"
    # the operator restarts the pod anyway (137 is retryable): the wrapper refuses to train on
    assert entrypoint.main(_wrapper_env(tmp_path, run_dir, job_id, POD_UID="uid-next")) == policy.EXIT_GIVE_UP
    assert len(read_jsonl(run_dir / "restarts.jsonl")) == 3
    # a new submission (another job id) has its own budget
    assert recovery.budget(run_dir, "other", 2).exhausted is False


def test_mltrain_status_tells_the_same_story_as_kubectl(
    api_server: FakeApiServer, run: tuple[Path, Path, str], monkeypatch
) -> None:
    from mltrain.launch import status

    eks, run_dir, job_id = run
    api_server.pods = [
        _pod_status(f"{JOB}-master-0", "uid-m", "ip-b", job_id, phase="Failed", state={"terminated": _term(137)}),
        _pod_status(f"{JOB}-worker-0", "uid-w", "ip-a", job_id, master=False),
    ]
    key = f"/apis/kubeflow.org/v1/namespaces/mltrain/pytorchjobs/{JOB}"
    api_server.objects[key]["status"]["conditions"].append(
        {"type": "Restarting", "status": "True", "lastTransitionTime": "2026-11-30T10:05:00Z"}
    )
    st = status.run_status(run_dir)
    assert (st.job_id, st.scheduler_state) == (job_id, "Restarting")  # kubectl get pytorchjob: Restarting
    assert st.restarts == 1 and st.state == "requeued"
    assert "requeued after killed on ip-b" in st.explanation
    assert "restarts by cause: killed 1" in st.notes
    assert f"job {job_id} Restarting" in status.detail_line(st)
    api_server.objects[key]["status"]["conditions"].append(
        {"type": "Running", "status": "True", "lastTransitionTime": "2026-11-30T10:06:00Z"}
    )
    st = status.run_status(run_dir)
    assert st.scheduler_state == "Running" and st.running and st.state == "running"
    assert len(read_jsonl(run_dir / "restarts.jsonl")) == 1  # polled twice, recorded once
    api_server.objects[key]["status"]["conditions"].append(
        {"type": "Succeeded", "status": "True", "lastTransitionTime": "2026-11-30T11:00:00Z"}
    )
    (run_dir / "control").mkdir(exist_ok=True)
    (run_dir / "control" / "exit_reason").write_text("done\n")
    st = status.run_status(run_dir)
    assert st.scheduler_state == "Succeeded" and not st.running and st.state == "done"
    # no API api_server reachable: still a row, with the reason
    calls = []
    monkeypatch.setattr(
        kc, "api_client", lambda: calls.append(1) or (_ for _ in ()).throw(RuntimeError("no credentials"))
    )
    down: dict[str, str] = {}
    st = status.run_status(run_dir, k8s_down=down)
    assert st.job_id == job_id and st.scheduler_state is None and "no credentials" in (st.scheduler or "")
    # the next run of the same `mltrain status` does not wait for the API server again
    st = status.run_status(run_dir, k8s_down=down)
    assert "no credentials (not asked again)" in (st.scheduler or "") and calls == [1]
    assert st.state == "done"  # the run's own exit record: finished, whatever the API says
    # not finished: with the API silent the job may still be queued or running, so the state is unknown (the
    # pipeline waits on it), not whatever the run's files last said (it would resubmit a failed run)
    (run_dir / "control" / "exit_reason").write_text("failed\n")
    st = status.run_status(run_dir, k8s_down={})
    assert st.state == "unknown" and st.explanation.startswith("the Kubernetes API did not answer: ")
    assert "no credentials" in st.explanation and f"job {job_id} may still be queued or running" in st.explanation
    assert any(n.startswith("from the run's files: ") for n in st.notes)


def _health_env(run_dir: Path, node: str) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "MLTRAIN_RUN_DIR": str(run_dir),
        "MLTRAIN_JOB_ID": "qwen-1",
        "MLTRAIN_MAX_RESTARTS": "5",
        "MLTRAIN_HEALTH_BURN_IN_S": "0",
        "NODE_NAME": node,
        "POD_NAME": f"{JOB}-master-0",
        "POD_UID": "uid-h",
    }


def _core():
    from kubernetes import client

    return client.CoreV1Api(kc.api_client())


def test_failed_health_check_labels_the_node_and_the_next_spec_excludes_it(
    api_server: FakeApiServer, run: tuple[Path, Path, str]
) -> None:
    eks, run_dir, _ = run
    cfg = load_run_config(RUN).model_copy(update={"launch": load_run_config(RUN).launch.model_copy()})
    cfg.launch.health_check = True
    spec = kc.load_eks_spec(eks)

    def fails(cmd: list[str]) -> subprocess.CompletedProcess[str]:
        assert cmd[-2:] == ["--record", str(run_dir / "k8s" / "health.jsonl")] and "--burn-in-s" in cmd
        return subprocess.CompletedProcess(cmd, 1, "mltrain-health ip-b FAIL ecc: 3 uncorrectable\n", "")

    assert health_init.main(_health_env(run_dir, "ip-b"), core=_core(), run=fails) == 1
    method, path, body = api_server.calls[-1]
    assert (method, path) == ("PATCH", f"{NODES}/ip-b")
    assert body["metadata"]["labels"] == {"mltrain.io/gpu-health": "failed"}
    assert api_server.objects[f"{NODES}/ip-b"]["metadata"]["labels"]["mltrain.io/gpu-health"] == "failed"
    (rec,) = read_jsonl(run_dir / "restarts.jsonl")
    assert (rec["cause"], rec["node"], rec["action"], rec["counted"]) == ("health_check", "ip-b", "requeue", True)
    # the next attempt's spec: off the node by hostname (run dir) and by the label (this job's own restarts)
    r = mf.render(cfg, spec, "pytorchjob", run_dir_local=mf.local_run_dir(cfg, spec))
    pod = _pod(r.job)["spec"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["ip-b"]},
        {"key": "mltrain.io/gpu-health", "operator": "NotIn", "values": ["failed"]},
    ]
    # a healthy node: nothing labelled, nothing recorded
    api_server.calls.clear()
    ok = subprocess.CompletedProcess([], 0, "mltrain-health ip-a PASS 9 checks\n", "")
    assert health_init.main(_health_env(run_dir, "ip-a"), core=_core(), run=lambda c: ok) == 0
    assert api_server.calls == [] and len(read_jsonl(run_dir / "restarts.jsonl")) == 1
    # no permission to label (here: an unknown node): the record still excludes it next time
    assert health_init.main(_health_env(run_dir, "ip-c"), core=_core(), run=fails) == 1
    assert policy.failed_nodes(run_dir) == ["ip-b", "ip-c"]


def test_health_init_runs_the_real_mltrain_health(tmp_path: Path) -> None:
    """The real `mltrain health` (no GPU here: a test-only failure for this host) exits 1, and so does the init."""
    from mltrain.ops.health import FAKE_FAIL_HOSTS_ENV, this_host

    run_dir = tmp_path / "runs" / "r"
    env = {**_health_env(run_dir, "ip-x"), FAKE_FAIL_HOSTS_ENV: this_host()}
    env.pop("SLURMD_NODENAME", None)

    class NoApi:
        def patch_node(self, *a, **k):
            raise PermissionError("forbidden")

    assert health_init.main(env, core=NoApi()) == 1
    (verdict,) = read_jsonl(run_dir / "k8s" / "health.jsonl")
    assert verdict["status"] == "FAIL" and verdict["host"] == this_host()
    assert read_jsonl(run_dir / "restarts.jsonl")[0]["node"] == "ip-x"
    assert socket.gethostname()  # the host the record names is this machine's


@pytest.mark.parametrize("kind", mf.KINDS)
def test_health_check_renders_init_container_rbac_and_label_affinity(kind: str) -> None:
    cfg = load_run_config(RUN, ["launch.health_check=true", "launch.health_burn_in_s=5"])
    spec = kc.load_eks_spec(EKS)
    r = mf.render(cfg, spec, kind)
    role, binding = r.objects[:2]
    assert (role["kind"], role["metadata"]["name"]) == ("ClusterRole", "mltrain-node-health")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]
    assert binding["roleRef"]["name"] == "mltrain-node-health"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mltrain", "namespace": "mltrain"}]  # the spec's
    _core_validate(role)
    _core_validate(binding)
    holder = r.job if kind == "pytorchjob" else r.objects[2]
    pod = _pod(holder)
    (init,) = pod["spec"]["initContainers"]
    assert init["name"] == "gpu-health" and init["command"] == ["python", "-m", "mltrain.launch.k8s.health_init"]
    env = {e["name"]: e.get("value") for e in init["env"]}
    assert env["MLTRAIN_HEALTH_BURN_IN_S"] == "5" and {"NODE_NAME", "POD_UID", "MLTRAIN_JOB_ID"} <= env.keys()
    assert init["resources"]["limits"]["nvidia.com/gpu"] == "8"
    aff = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert aff["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "mltrain.io/gpu-health", "operator": "NotIn", "values": ["failed"]}
    ]
    if kind == "pytorchjob":
        assert _errors(_crd_validator("pytorchjob"), r.job) == []
        _core_validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, **pod})
    else:
        assert _errors(_crd_validator("trainjob"), r.job) == []
        rj = r.objects[2]["spec"]["template"]["spec"]["replicatedJobs"][0]
        _core_validate(
            {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": rj["template"]["spec"]}
        )
    _golden(f"eks-p5-2.health-check.{kind}.yaml", r.to_yaml())


def test_submit_applies_the_rbac_once(api_server: FakeApiServer, tmp_path: Path) -> None:
    run_yaml = tmp_path / "run.yaml"
    data = yaml.safe_load(RUN.read_text())
    data.setdefault("launch", {})["health_check"] = True
    run_yaml.write_text(yaml.safe_dump(data))
    kc.submit(run_yaml, EKS, "pytorchjob", [], console=_console())
    assert [(m, p) for m, p, _ in api_server.calls] == [
        ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles"),
        ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"),
        ("POST", "/apis/kubeflow.org/v1/namespaces/mltrain/pytorchjobs"),
    ]
    api_server.objects.pop(f"/apis/kubeflow.org/v1/namespaces/mltrain/pytorchjobs/{JOB}")
    kc.submit(run_yaml, EKS, "pytorchjob", [], console=_console())  # the role exists (409): kept, job created
    assert api_server.calls[-1][:2] == ("POST", "/apis/kubeflow.org/v1/namespaces/mltrain/pytorchjobs")


def test_wrapper_names_an_oom_kill_of_a_rank(tmp_path: Path) -> None:
    """A rank killed by the OOM killer (no exit reason, SIGKILL): the wrapper reads the container's cgroup
    oom_kill counter and records oom_killed instead of lost_rank, since the operator deletes the pod at once."""
    run_dir = tmp_path / "runs" / "r"
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
    stub = tmp_path / "oom.py"
    stub.write_text(
        f"import pathlib, sys\npathlib.Path({str(events)!r}).write_text('oom 2\\noom_kill 1\\n')\nsys.exit(1)\n"
    )
    env = {
        **_wrapper_env(tmp_path, run_dir, "j-1"),
        "MLTRAIN_TORCHRUN": f"{sys.executable} {stub}",
        "MLTRAIN_MEMORY_EVENTS": str(events),
    }
    assert entrypoint.main(env) == policy.EXIT_FAILED
    (rec,) = read_jsonl(run_dir / "restarts.jsonl")
    assert (rec["cause"], rec["counted"], rec["action"]) == ("oom_killed", True, "requeue")
    # no OOM kill in between: still a lost rank
    assert entrypoint.main(env) == policy.EXIT_FAILED
    assert read_jsonl(run_dir / "restarts.jsonl")[-1]["cause"] == "lost_rank"


def test_a_node_is_failed_only_after_the_grace(tmp_path: Path) -> None:
    """A node NotReady for a few seconds (a missed heartbeat) is not yet a failed node; for a minute it is."""
    now = 1_800_000_000.0

    def node(status: str, ago_s: float) -> dict:
        import datetime as dt

        t = dt.datetime.fromtimestamp(now - ago_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"status": {"conditions": [{"type": "Ready", "status": status, "lastTransitionTime": t}]}}

    assert recovery.node_ready(node("True", 5), now) is True
    assert recovery.node_ready(node("Unknown", 10), now) is None
    assert recovery.node_ready(node("False", recovery.NODE_GRACE_S + 1), now) is False
    assert recovery.node_ready(None, now) is None
    run_dir = tmp_path / "run"
    pod = _pod_status(f"{JOB}-master-0", "uid-m", "ip-b", "j")
    assert recovery.record_failures(run_dir, [pod], {"ip-b": recovery.node_ready(node("Unknown", 10), now)}) == []
    (rec,) = recovery.record_failures(run_dir, [pod], {"ip-b": recovery.node_ready(node("Unknown", 90), now)})
    assert (rec["cause"], rec["node"]) == ("node_failure", "ip-b")
