"""`mltrain k8s render|submit|status|logs|cancel`: the rendered job against the Kubernetes API.

The `kubernetes` package is an optional extra (`pip install mltrain[k8s]`), imported inside functions.
Training progress comes from the run dir on the shared volume (the same files `mltrain status` reads
on Slurm), where it is mounted here; the scheduler column comes from the job's conditions and pods.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from mltrain.cluster.spec import EksSpec, load_eks_spec
from mltrain.config import RunConfig, load_run_config
from mltrain.errors import LaunchError
from mltrain.fsutil import append_jsonl, atomic_write, read_jsonl
from mltrain.launch.k8s import manifests as mf
from mltrain.launch.k8s import recovery

JOBS_FILE = "k8s/jobs.jsonl"
STATUS_TIMEOUT_S = 10.0  # `mltrain status` asks the API about every k8s run: an unreachable one must not hang it


def api_client():
    """An ApiClient from the in-cluster service account, else ~/.kube/config (tests replace this)."""
    from mltrain.cluster.kube_api import kube_api_client

    return kube_api_client(LaunchError)


def _api_error(what: str, e: Exception) -> LaunchError:
    status, reason, msg = getattr(e, "status", "?"), getattr(e, "reason", ""), ""
    try:
        msg = json.loads(getattr(e, "body", "") or "{}").get("message", "")
    except (TypeError, ValueError):
        pass
    return LaunchError(f"{what}: HTTP {status} {reason}{': ' + msg if msg else ''}")


def _plural(obj: dict[str, Any]) -> tuple[str, str, str]:
    group, version = obj["apiVersion"].split("/")
    plural = {
        "PyTorchJob": mf.PYTORCHJOB_PLURAL,
        "TrainJob": mf.TRAINJOB_PLURAL,
        "TrainingRuntime": mf.RUNTIME_PLURAL,
    }[obj["kind"]]
    return group, version, plural


def _job_kind(kind: str) -> tuple[str, str, str]:
    if kind == "pytorchjob":
        return mf.PYTORCHJOB_GROUP, mf.PYTORCHJOB_VERSION, mf.PYTORCHJOB_PLURAL
    return mf.TRAINER_GROUP, mf.TRAINER_VERSION, mf.TRAINJOB_PLURAL


def load(
    run_yaml: str | Path, cluster_yaml: str | Path, overrides: list[str] | None = None
) -> tuple[RunConfig, EksSpec]:
    return load_run_config(run_yaml, list(overrides or [])), load_eks_spec(cluster_yaml)


def render_command(
    run_yaml: Path, cluster_yaml: Path, kind: str, out: Path | None, overrides: list[str] | None, console: Console
) -> mf.Rendered:
    """`mltrain k8s render`: the manifests as YAML, to stdout or atomically to -o."""
    cfg, spec = load(run_yaml, cluster_yaml, overrides)
    r = mf.render(cfg, spec, kind, spec_source=str(cluster_yaml), run_dir_local=mf.local_run_dir(cfg, spec))
    text = r.to_yaml()
    err = Console(stderr=True)
    for w in r.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if out is None:
        console.out(text, end="", highlight=False)
    else:
        atomic_write(out, text)
        err.print(f"wrote {out} ({r.kind} {r.name}, namespace {r.namespace})", highlight=False)
    return r


def submit(
    run_yaml: Path, cluster_yaml: Path, kind: str, overrides: list[str] | None, console: Console, api=None
) -> str:
    """Create the job (and, for a TrainJob, create or replace its TrainingRuntime); returns the job id."""
    mf.require_extra()
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException

    cfg, spec = load(run_yaml, cluster_yaml, overrides)
    job_id = f"{mf.job_name(cfg.name)}-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}"
    local = mf.local_run_dir(cfg, spec)
    r = mf.render(cfg, spec, kind, spec_source=str(cluster_yaml), run_dir_local=local, job_id=job_id)
    for w in r.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    api = api or api_client()
    custom = k.CustomObjectsApi(api)
    for obj in r.objects:
        if obj["kind"] in ("ClusterRole", "ClusterRoleBinding"):
            _apply_rbac(k.RbacAuthorizationV1Api(api), obj)
            continue
        group, version, plural = _plural(obj)
        name = obj["metadata"]["name"]
        try:
            custom.create_namespaced_custom_object(group, version, spec.namespace, plural, obj)
        except ApiException as e:
            if e.status == 409 and obj["kind"] == "TrainingRuntime":
                try:  # the runtime is ours and per run: replace it with this render
                    cur = custom.get_namespaced_custom_object(group, version, spec.namespace, plural, name)
                    body = {
                        **obj,
                        "metadata": {**obj["metadata"], "resourceVersion": cur["metadata"]["resourceVersion"]},
                    }
                    custom.replace_namespaced_custom_object(group, version, spec.namespace, plural, name, body)
                    continue
                except ApiException as e2:
                    raise _api_error(f"replace {obj['kind']} {spec.namespace}/{name}", e2) from None
            if e.status == 409:
                raise LaunchError(
                    f"{obj['kind']} {spec.namespace}/{name} already exists: "
                    f"`mltrain k8s cancel {cfg.name} --cluster {cluster_yaml} --kind {kind}` first"
                ) from None
            raise _api_error(f"create {obj['kind']} {spec.namespace}/{name}", e) from None
    if local is not None:
        append_jsonl(
            local / JOBS_FILE,
            {
                "event": "submit",
                "job_id": job_id,
                "kind": r.kind,
                "name": r.name,
                "namespace": r.namespace,
                "time": time.time(),
            },
        )
    console.print(
        f"submitted {r.job['kind']} {r.namespace}/{r.name} (job id {job_id}): {spec.nodes} x {spec.instance_type}, "
        f"{spec.procs_per_node} processes per node; run dir {spec.storage.run_base_dir}/runs/{cfg.name}",
        highlight=False,
        soft_wrap=True,
    )
    return job_id


def _apply_rbac(rbac: Any, obj: dict[str, Any]) -> None:
    """Create the health check's ClusterRole/Binding; one that exists already (another run's) is kept."""
    from kubernetes.client.exceptions import ApiException

    create = rbac.create_cluster_role if obj["kind"] == "ClusterRole" else rbac.create_cluster_role_binding
    try:
        create(obj)
    except ApiException as e:
        if e.status != 409:
            raise _api_error(
                f"create {obj['kind']} {obj['metadata']['name']} (needs cluster-admin; or apply the rendered one "
                "with kubectl)",
                e,
            ) from None


def _ref(run: str, cluster_yaml: Path) -> tuple[str, str, EksSpec]:
    """(run name, job name, spec) from a run config YAML or a run name."""
    spec = load_eks_spec(cluster_yaml)
    name = load_run_config(run).name if run.endswith((".yaml", ".yml")) else run
    return name, mf.job_name(name), spec


def job_state(job: dict[str, Any]) -> str:
    """The newest true condition of a PyTorchJob/TrainJob (Created, Running, Restarting, Succeeded, Failed...)."""
    conds = [c for c in (job.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]
    if not conds:
        return "Pending"
    conds.sort(key=lambda c: c.get("lastTransitionTime") or "")
    return str(conds[-1].get("type"))


def _pod_selector(kind: str, name: str, leader_only: bool = False) -> str:
    if kind == "pytorchjob":
        sel = f"training.kubeflow.org/job-name={name}"
        return sel + (",training.kubeflow.org/replica-type=master" if leader_only else "")
    sel = f"jobset.sigs.k8s.io/jobset-name={name}"
    return sel + (",batch.kubernetes.io/job-completion-index=0" if leader_only else "")


def status(run: str, cluster_yaml: Path, kind: str, console: Console, api=None) -> dict[str, Any]:
    """`mltrain k8s status`: job state and pods from the API, step/loss/restarts from the run dir."""
    mf.require_extra()
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException
    from rich import box
    from rich.table import Table

    run_name, name, spec = _ref(run, cluster_yaml)
    api = api or api_client()
    group, version, plural = _job_kind(kind)
    try:
        job = k.CustomObjectsApi(api).get_namespaced_custom_object(group, version, spec.namespace, plural, name)
        state = job_state(job)
    except ApiException as e:
        if e.status != 404:
            raise _api_error(f"get {plural} {spec.namespace}/{name}", e) from None
        state = "NotFound"
    base = spec.storage.local_run_base_dir or spec.storage.run_base_dir
    run_dir = Path(base) / "runs" / run_name
    core = k.CoreV1Api(api)
    try:
        pods = core.list_namespaced_pod(spec.namespace, label_selector=_pod_selector(kind, name)).items
    except ApiException as e:
        raise _api_error(f"list pods of {spec.namespace}/{name}", e) from None
    if run_dir.is_dir():  # record the pod and node failures the wrapper could not (recovery.py)
        recovery.record(core, pods, run_dir)
    phases: dict[str, int] = {}
    for p in pods:
        phases[p.status.phase] = phases.get(p.status.phase, 0) + 1
    nodes = sorted({p.spec.node_name for p in pods if p.spec and p.spec.node_name})
    row: dict[str, Any] = {
        "run": run_name,
        "job": f"{name} {state}",
        "pods": ", ".join(f"{v} {kk}" for kk, v in sorted(phases.items())) or "-",
        "nodes": ",".join(nodes) or "-",
    }
    if run_dir.is_dir():
        from mltrain.launch.status import run_status

        st = run_status(run_dir)
        row.update(
            step=f"{st.step if st.step is not None else '-'}/{st.total_steps or '?'}",
            loss=f"{st.loss:.4f}" if isinstance(st.loss, (int, float)) else "-",
            restarts=str(st.restarts) + (f" ({st.preemptions}p)" if st.preemptions else ""),
            status=st.explanation,
        )
    else:
        row.update(step="-", loss="-", restarts="-", status=f"run dir {run_dir} is not mounted here")
    table = Table(title="mltrain k8s", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("run", "job", "pods", "nodes", "step", "loss", "restarts", "status"):
        table.add_column(col, overflow="fold")
    table.add_row(*(escape(str(row[c])) for c in ("run", "job", "pods", "nodes", "step", "loss", "restarts", "status")))
    console.print(table)
    if run_dir.is_dir():
        row["causes"] = recovery.causes_line(run_dir)
        job_id = _latest_submit(run_dir).get("job_id") or _env_of(pods, "MLTRAIN_JOB_ID")
        max_restarts = _env_of(pods, "MLTRAIN_MAX_RESTARTS")
        if job_id and max_restarts and max_restarts.isdigit():
            b = recovery.budget(run_dir, str(job_id), int(max_restarts))
            row["budget"], row["budget_exhausted"] = b.words(), b.exhausted
        for line in (row.get("causes"), row.get("budget")):
            if line:
                console.print(escape(line), highlight=False, soft_wrap=True)
    return row


def _latest_submit(run_dir: Path) -> dict[str, Any]:
    """The newest `mltrain k8s submit` record of the run ({} without one)."""
    subs = [r for r in read_jsonl(run_dir / JOBS_FILE) if r.get("event") == "submit"]
    return subs[-1] if subs else {}


def _env_of(pods: list[Any], key: str) -> str | None:
    """An env value of the pods' main container (the newest pod that has it)."""
    for p in sorted(pods, key=lambda p: str(p.metadata.creation_timestamp or ""), reverse=True):
        for e in (p.spec.containers[0].env or []) if p.spec and p.spec.containers else []:
            if e.name == key and e.value is not None:
                return str(e.value)
    return None


def watch(run: str, cluster_yaml: Path, kind: str, interval_s: float, count: int | None, console: Console, api=None):
    """`mltrain k8s watch`: poll the job's pods every `interval_s` and record each failure as it shows up
    (a PyTorchJob's operator deletes a failed pod when it restarts it, so a poll between two restarts may
    miss what `status` alone would see); `count` polls, or until the job Succeeded or Failed."""
    mf.require_extra()
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException

    run_name, name, spec = _ref(run, cluster_yaml)
    base = spec.storage.local_run_base_dir or spec.storage.run_base_dir
    run_dir = Path(base) / "runs" / run_name
    if not run_dir.is_dir():
        raise LaunchError(f"run dir {run_dir} is not mounted here: set storage.local_run_base_dir in {cluster_yaml}")
    api = api or api_client()
    core, custom = k.CoreV1Api(api), k.CustomObjectsApi(api)
    group, version, plural = _job_kind(kind)
    n = 0
    while True:
        try:
            _, new = recovery.poll(core, spec.namespace, _pod_selector(kind, name), run_dir)
            state = job_state(custom.get_namespaced_custom_object(group, version, spec.namespace, plural, name))
        except ApiException as e:
            if e.status == 404:
                state = "NotFound"
                new = []
            else:
                raise _api_error(f"poll {plural} {spec.namespace}/{name}", e) from None
        for rec in new:
            console.print(
                f"recorded {rec['cause']} of pod {rec['pod']}"
                + (f" on {rec['node']}" if rec.get("node") else "")
                + f": {rec['action']}"
                + (" (charged)" if rec.get("counted") else ""),
                highlight=False,
            )
        n += 1
        if state in ("Succeeded", "Failed", "NotFound") or (count is not None and n >= count):
            console.print(f"{name} {state}", highlight=False)
            return state
        time.sleep(interval_s)


def run_view(run_dir: Path, down: dict[str, str] | None = None) -> dict[str, Any] | None:
    """For `mltrain status`: the run's newest k8s submission as kubectl shows it (the job's newest condition,
    its nodes), after recording its pods' failures; None for a run never submitted to Kubernetes. Never
    raises: an unreachable API server gives state None and the reason in `error`."""
    sub = _latest_submit(run_dir)
    if not sub.get("name") or not sub.get("namespace"):
        return None
    view: dict[str, Any] = {"job_id": str(sub.get("job_id") or sub["name"]), "state": None, "nodes": []}
    if down and "error" in down:  # one `mltrain status` waits for an unreachable API server once, not per run
        view["error"] = f"{down['error']} (not asked again)"
        return view
    try:
        from kubernetes import client as k
        from kubernetes.client.exceptions import ApiException

        kind = "pytorchjob" if sub.get("kind") == "pytorchjob" else "trainjob"
        api = api_client()
        group, version, plural = _job_kind(kind)
        try:
            job = k.CustomObjectsApi(api).get_namespaced_custom_object(
                group, version, sub["namespace"], plural, sub["name"], _request_timeout=STATUS_TIMEOUT_S
            )
            view["state"] = job_state(job)
        except ApiException as e:
            if e.status != 404:
                raise
            view["state"] = "NotFound"
        selector = _pod_selector(kind, sub["name"])
        pods, _ = recovery.poll(k.CoreV1Api(api), sub["namespace"], selector, run_dir, STATUS_TIMEOUT_S)
        view["nodes"] = sorted({(p.get("spec") or {}).get("nodeName") for p in pods} - {None})
    except Exception as e:  # status shows every run, whatever one API server says
        view["error"] = str(getattr(e, "reason", None) or e).splitlines()[0] if str(e) else type(e).__name__
        if down is not None:
            down["error"] = view["error"]
    return view


def logs(run: str, cluster_yaml: Path, kind: str, follow: bool, console: Console, api=None) -> None:
    """`mltrain k8s logs`: the rank-0 pod's log (torchrun prefixes every rank's lines)."""
    mf.require_extra()
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException

    _, name, spec = _ref(run, cluster_yaml)
    core = k.CoreV1Api(api or api_client())
    try:
        pods = core.list_namespaced_pod(
            spec.namespace, label_selector=_pod_selector(kind, name, leader_only=True)
        ).items
    except ApiException as e:
        raise _api_error(f"list pods of {spec.namespace}/{name}", e) from None
    if not pods:
        raise LaunchError(f"no rank-0 pod of {kind} {spec.namespace}/{name} (not submitted, pending, or cleaned up)")
    pod = sorted(pods, key=lambda p: str(p.metadata.creation_timestamp or ""))[-1].metadata.name
    container = "pytorch" if kind == "pytorchjob" else "node"
    try:
        resp = core.read_namespaced_pod_log(
            pod, spec.namespace, container=container, follow=follow, _preload_content=False
        )
        for chunk in resp.stream(4096):
            console.out(chunk.decode(errors="replace"), end="", highlight=False)
    except ApiException as e:
        raise _api_error(f"logs of pod {spec.namespace}/{pod}", e) from None


def cancel(run: str, cluster_yaml: Path, kind: str, console: Console, api=None) -> None:
    """`mltrain k8s cancel`: delete the job (pods get SIGTERM: the trainer checkpoints) and its runtime."""
    mf.require_extra()
    from kubernetes import client as k
    from kubernetes.client.exceptions import ApiException

    _, name, spec = _ref(run, cluster_yaml)
    custom = k.CustomObjectsApi(api or api_client())
    group, version, plural = _job_kind(kind)
    body = k.V1DeleteOptions(propagation_policy="Foreground")
    try:
        custom.delete_namespaced_custom_object(group, version, spec.namespace, plural, name, body=body)
    except ApiException as e:
        if e.status == 404:
            raise LaunchError(
                f"{plural} {spec.namespace}/{name} not found (already cancelled or never submitted)"
            ) from None
        raise _api_error(f"delete {plural} {spec.namespace}/{name}", e) from None
    if kind == "trainjob":
        try:
            custom.delete_namespaced_custom_object(
                mf.TRAINER_GROUP, mf.TRAINER_VERSION, spec.namespace, mf.RUNTIME_PLURAL, f"mltrain-{name}", body=body
            )
        except ApiException as e:
            if e.status != 404:
                raise _api_error(f"delete TrainingRuntime {spec.namespace}/mltrain-{name}", e) from None
    console.print(f"cancelled {kind} {spec.namespace}/{name}; it will not be restarted", highlight=False)
