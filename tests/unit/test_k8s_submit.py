"""`mltrain k8s submit|status|logs|cancel` against a fake API server.

No kube-apiserver can run here (it is not packaged), so this is a mock: the real `kubernetes` client
(ApiClient, CustomObjectsApi, CoreV1Api, RESTClientObject) runs unchanged and only its urllib3 pool
manager is replaced by an in-memory server that records every call (method, path, JSON body) and keeps
the created objects, so the tests check the exact requests a real API server would receive.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from rich.console import Console
from tests.helpers import mltrain_cmd

from mltrain.errors import LaunchError
from mltrain.launch.k8s import client as kc

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "configs" / "qwen2.5-0.5b.yaml"
EKS = ROOT / "configs" / "clusters" / "eks-p5-2.yaml"


class _Resp:
    def __init__(self, status: int, body: object, reason: str = "") -> None:
        self.status, self.reason = (
            status,
            reason or {200: "OK", 201: "Created", 404: "Not Found", 409: "Conflict"}.get(status, ""),
        )
        self.data = body if isinstance(body, bytes) else json.dumps(body).encode()

    def getheaders(self) -> dict[str, str]:
        return {"content-type": "application/json"}

    def getheader(self, name: str, default=None):
        return self.getheaders().get(name.lower(), default)

    def stream(self, amt: int = 4096):
        for i in range(0, len(self.data), amt):
            yield self.data[i : i + amt]

    def release_conn(self) -> None:
        pass


class FakeApiServer:
    """The urllib3 PoolManager the kubernetes client talks through: records calls, stores objects."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.objects: dict[str, dict] = {}
        self.pods: list[dict] = []
        self.log = b""

    def request(self, method, url, fields=None, body=None, preload_content=True, timeout=None, headers=None):
        u = urlparse(url)
        path, query = u.path, dict(fields or [])
        data = json.loads(body) if isinstance(body, (str, bytes)) and body else body
        self.calls.append((method, path, data))
        if path.endswith("/pods") and method == "GET":
            sel = query.get("labelSelector", "")
            want = dict(kv.split("=") for kv in sel.split(",") if kv)
            items = [p for p in self.pods if all(p["metadata"]["labels"].get(k) == v for k, v in want.items())]
            return _Resp(200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
        if path.endswith("/log"):
            return _Resp(200, self.log)
        if method == "POST":
            key = f"{path}/{data['metadata']['name']}"
            if key in self.objects:
                return _Resp(409, {"kind": "Status", "message": f"{data['metadata']['name']} already exists"})
            self.objects[key] = {**data, "metadata": {**data["metadata"], "resourceVersion": "1"}}
            return _Resp(201, self.objects[key])
        if path not in self.objects:
            return _Resp(404, {"kind": "Status", "message": "not found"})
        if method == "GET":
            return _Resp(200, self.objects[path])
        if method == "PUT":
            self.objects[path] = data
            return _Resp(200, data)
        if method == "DELETE":
            return _Resp(200, self.objects.pop(path))
        if method == "PATCH":  # a merge patch of metadata labels/annotations (what mltrain sends)
            meta = self.objects[path].setdefault("metadata", {})
            for k, v in (data.get("metadata") or {}).items():
                meta[k] = {**(meta.get(k) or {}), **v} if isinstance(v, dict) else v
            return _Resp(200, self.objects[path])
        return _Resp(405, {}, "Method Not Allowed")


def install_fake_api(monkeypatch) -> FakeApiServer:
    """A FakeApiServer behind kc.api_client: the real kubernetes client, its HTTP pool replaced."""
    from kubernetes import client

    fake = FakeApiServer()

    def api_client():
        cfg = client.Configuration()
        cfg.host = "https://apiserver.invalid"
        api = client.ApiClient(cfg)
        api.rest_client.pool_manager = fake
        return api

    monkeypatch.setattr(kc, "api_client", api_client)
    return fake


@pytest.fixture
def server(monkeypatch) -> FakeApiServer:
    return install_fake_api(monkeypatch)


def _console() -> Console:
    return Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115


def test_submit_pytorchjob_posts_the_rendered_job(server: FakeApiServer) -> None:
    job_id = kc.submit(RUN, EKS, "pytorchjob", [], console=_console())
    assert re.fullmatch(r"qwen2-5-0-5b-\d{14}", job_id)
    ((method, path, body),) = server.calls
    assert (method, path) == ("POST", "/apis/kubeflow.org/v1/namespaces/mltrain/pytorchjobs")
    assert body["kind"] == "PyTorchJob" and body["metadata"]["name"] == "qwen2-5-0-5b"
    env = {
        e["name"]: e.get("value")
        for e in body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MLTRAIN_JOB_ID"] == job_id  # each submit gets its own restart budget
    # a second submit of the same run: one clear error, nothing replaced
    with pytest.raises(LaunchError, match="already exists: `mltrain k8s cancel qwen2.5-0.5b"):
        kc.submit(RUN, EKS, "pytorchjob", [], console=_console())


def test_submit_trainjob_creates_then_replaces_its_runtime(server: FakeApiServer) -> None:
    kc.submit(RUN, EKS, "trainjob", [], console=_console())
    assert [(m, p) for m, p, _ in server.calls] == [
        ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/mltrain/trainingruntimes"),
        ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/mltrain/trainjobs"),
    ]
    kc.cancel("qwen2.5-0.5b", EKS, "trainjob", console=_console())
    server.objects["/apis/trainer.kubeflow.org/v1alpha1/namespaces/mltrain/trainingruntimes/mltrain-qwen2-5-0-5b"] = {
        "metadata": {"name": "mltrain-qwen2-5-0-5b", "resourceVersion": "7"}
    }  # a runtime left over (e.g. cancelled by kubectl): replaced with this render
    server.calls.clear()
    kc.submit(RUN, EKS, "trainjob", [], console=_console())
    methods = [(m, p.rsplit("/", 1)[-1]) for m, p, _ in server.calls]
    assert methods == [
        ("POST", "trainingruntimes"),
        ("GET", "mltrain-qwen2-5-0-5b"),
        ("PUT", "mltrain-qwen2-5-0-5b"),
        ("POST", "trainjobs"),
    ]
    assert server.calls[2][2]["metadata"]["resourceVersion"] == "7"
    assert server.calls[2][2]["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] == 5


def _pod(name: str, node: str, phase: str, master: bool) -> dict:
    labels = {"training.kubeflow.org/job-name": "qwen2-5-0-5b"}
    if master:
        labels["training.kubeflow.org/replica-type"] = "master"
    return {
        "metadata": {"name": name, "labels": labels, "creationTimestamp": "2026-11-30T10:00:00Z"},
        "spec": {"nodeName": node, "containers": [{"name": "pytorch"}]},
        "status": {"phase": phase},
    }


def test_status_reads_api_and_run_dir(server: FakeApiServer, tmp_path: Path) -> None:
    spec = yaml.safe_load(EKS.read_text())
    spec["storage"]["local_run_base_dir"] = str(tmp_path)
    eks = tmp_path / "eks.yaml"
    eks.write_text(yaml.safe_dump(spec))
    run_dir = tmp_path / "runs" / "qwen2.5-0.5b"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": {"max_steps": 20000}}))
    now = time.time()
    metrics = [
        {"kind": "start", "step": 0, "time": now - 100},
        {"kind": "train", "step": 500, "loss": 3.25, "step_time_s": 0.1, "time": now - 50},
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (run_dir / "restarts.jsonl").write_text(json.dumps({"cause": "hang", "action": "requeue", "node": "ip-a"}) + "\n")
    kc.submit(RUN, eks, "pytorchjob", [], console=_console())
    assert (run_dir / "k8s" / "jobs.jsonl").is_file()  # the submit is recorded in the run dir when mounted here
    key = "/apis/kubeflow.org/v1/namespaces/mltrain/pytorchjobs/qwen2-5-0-5b"
    server.objects[key]["status"] = {
        "conditions": [
            {"type": "Created", "status": "True", "lastTransitionTime": "2026-11-30T10:00:00Z"},
            {"type": "Running", "status": "True", "lastTransitionTime": "2026-11-30T10:01:00Z"},
        ]
    }
    server.pods = [
        _pod("qwen2-5-0-5b-master-0", "ip-b", "Running", True),
        _pod("qwen2-5-0-5b-worker-0", "ip-c", "Running", False),
    ]
    row = kc.status("qwen2.5-0.5b", eks, "pytorchjob", console=_console())
    assert row["job"] == "qwen2-5-0-5b Running" and row["pods"] == "2 Running" and row["nodes"] == "ip-b,ip-c"
    assert row["step"] == "500/20000" and row["loss"] == "3.2500" and row["restarts"] == "1"
    # the pods, then their nodes (for node failures, recovery.py)
    paths = [p for _, p, _ in server.calls]
    assert paths[-3:] == ["/api/v1/namespaces/mltrain/pods", "/api/v1/nodes/ip-b", "/api/v1/nodes/ip-c"]
    # not submitted: NotFound, still a row
    server.objects.clear()
    server.pods = []
    assert kc.status(str(RUN), EKS, "pytorchjob", console=_console())["job"] == "qwen2-5-0-5b NotFound"


def test_logs_and_cancel(server: FakeApiServer) -> None:
    kc.submit(RUN, EKS, "pytorchjob", [], console=_console())
    server.pods = [
        _pod("qwen2-5-0-5b-master-0", "ip-b", "Running", True),
        _pod("qwen2-5-0-5b-worker-0", "ip-c", "Running", False),
    ]
    server.log = b"[rank0] step 10 loss 9.1\n"
    con = Console(record=True, width=200, file=open("/dev/null", "w"))  # noqa: SIM115
    kc.logs("qwen2.5-0.5b", EKS, "pytorchjob", False, console=con)
    assert "step 10 loss 9.1" in con.export_text()
    assert server.calls[-1][1] == "/api/v1/namespaces/mltrain/pods/qwen2-5-0-5b-master-0/log"
    kc.cancel("qwen2.5-0.5b", EKS, "pytorchjob", console=_console())
    method, path, body = server.calls[-1]
    assert (method, path) == ("DELETE", "/apis/kubeflow.org/v1/namespaces/mltrain/pytorchjobs/qwen2-5-0-5b")
    assert body["propagationPolicy"] == "Foreground"
    with pytest.raises(LaunchError, match="not found"):
        kc.cancel("qwen2.5-0.5b", EKS, "pytorchjob", console=_console())
    server.pods = []
    with pytest.raises(LaunchError, match="no rank-0 pod"):
        kc.logs("qwen2.5-0.5b", EKS, "pytorchjob", False, console=_console())


def test_no_credentials_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    p = subprocess.run(
        mltrain_cmd("k8s", "submit", str(RUN), "--cluster", str(EKS)),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "no Kubernetes credentials" in p.stderr
