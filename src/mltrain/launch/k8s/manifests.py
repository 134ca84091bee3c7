"""Render a run config + EKS spec as a Kubeflow PyTorchJob (kubeflow.org/v1) or a Trainer v2 TrainJob.

The objects are built from the official model packages (`kubeflow-training` for PyTorchJob,
`kubeflow-trainer-api` for TrainJob and its TrainingRuntime, `kubernetes` for the pod), so field names
and types are right by construction; the result is plain dicts, deterministic for a given input
(golden-tested). Both kinds share one pod: the in-pod wrapper (`python -m mltrain.launch.k8s.entrypoint`)
runs torchrun with c10d rendezvous and maps the trainer's exit reason to the restart policy (policy.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mltrain.cluster.spec import EksSpec
from mltrain.config import RunConfig, dump_yaml, layout_warning
from mltrain.errors import ConfigError
from mltrain.launch import nccl_env
from mltrain.launch.k8s import policy
from mltrain.launch.k8s.recovery import HEALTH_FAILED, HEALTH_LABEL
from mltrain.rundir import run_path

Kind = Literal["pytorchjob", "trainjob"]
KINDS: tuple[str, ...] = ("pytorchjob", "trainjob")

PYTORCHJOB_GROUP, PYTORCHJOB_VERSION, PYTORCHJOB_PLURAL = "kubeflow.org", "v1", "pytorchjobs"
TRAINER_GROUP, TRAINER_VERSION = "trainer.kubeflow.org", "v1alpha1"
TRAINJOB_PLURAL, RUNTIME_PLURAL = "trainjobs", "trainingruntimes"
KUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
RUN_LABEL = "mltrain.io/run"
EXIT_CODES_ANNOTATION = "mltrain.io/exit-codes"
TRAINER_ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
POD_GROUP_SCHEDULERS = {"volcano": "volcano", "coscheduling": "scheduler-plugins-scheduler"}
ENTRYPOINT = ["python", "-m", "mltrain.launch.k8s.entrypoint"]
HEALTH_ENTRYPOINT = ["python", "-m", "mltrain.launch.k8s.health_init"]
HEALTH_CONTAINER = "gpu-health"
# nodes are cluster-scoped: labelling one needs a ClusterRole, bound to the pods' service account
HEALTH_ROLE = "mltrain-node-health"
RUN_DIR_ENV = "MLTRAIN_RUN_DIR"
K8S_DIR = "k8s"  # <run>/k8s/: the run config the pods train from, written by the wrapper


@dataclass
class Rendered:
    """The manifests of one job, in the order they are applied, and what render noticed."""

    kind: str
    name: str
    namespace: str
    objects: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    @property
    def job(self) -> dict[str, Any]:
        return self.objects[-1]

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump_all(self.objects, sort_keys=False, width=120)


def job_name(run_name: str) -> str:
    """A DNS-1123 name from the run name (lowercase, '-', at most 40 characters so pod names fit in 63)."""
    name = re.sub(r"[^a-z0-9-]+", "-", run_name.lower()).strip("-")[:40].strip("-")
    return name or "run"


def check_fit(cfg: RunConfig, spec: EksSpec, spec_source: str) -> list[str]:
    """Cross-file checks (one clear line each); returns warnings for what is allowed but suspicious."""
    if spec.gpus_per_node == 0 and cfg.train.device != "cpu":
        raise ConfigError(
            f"{spec_source}: gpus_per_node: 0 GPUs per node, but run {cfg.name} trains on GPU "
            f"(train.device={cfg.train.device}); set gpus_per_node, or train.device: cpu for a CPU run"
        )
    warnings = []
    if nccl_env.has_efa(spec.instance_type) and spec.efa_per_node == 0:
        warnings.append(
            f"{spec.instance_type} has EFA but efa_per_node is 0: the pods get no EFA device and "
            "FI_PROVIDER=efa makes NCCL fail; set efa_per_node (32 on p5.48xlarge)"
        )
    world = spec.nodes * spec.procs_per_node
    if world > 1 and cfg.train.parallel == "none" and cfg.parallel is None:
        warnings.append(f"{world} processes but train.parallel=none; set train.parallel=ddp or fsdp")
    if layout_problem := layout_warning(cfg, world):
        warnings.append(layout_problem)
    return warnings


def _affinity(spec: EksSpec, failed: list[str], warnings: list[str], health_check: bool = False):
    """Keep pods off nodes that failed this run before: required when the node group has spares, else preferred.
    With the health check, also (required) off nodes labelled mltrain.io/gpu-health=failed, which the init
    container sets on a failing node: the job's own replacement pods avoid it without a new render."""
    from kubernetes import client as k

    if not spec.exclude_failed_nodes or (not failed and not health_check):
        return None
    required = []
    preferred = None
    if failed:
        by_host = k.V1NodeSelectorRequirement(key="kubernetes.io/hostname", operator="NotIn", values=failed)
        usable = (spec.max_nodes or spec.nodes) - len(failed)
        if usable >= spec.nodes:
            required.append(by_host)
        else:
            warnings.append(
                f"{len(failed)} failed node(s) but the node group has no spare ({usable} usable, {spec.nodes} needed): "
                "avoiding them only where possible (preferred anti-affinity)"
            )
            preferred = [
                k.V1PreferredSchedulingTerm(weight=100, preference=k.V1NodeSelectorTerm(match_expressions=[by_host]))
            ]
    if health_check:
        required.append(k.V1NodeSelectorRequirement(key=HEALTH_LABEL, operator="NotIn", values=[HEALTH_FAILED]))
    return k.V1Affinity(
        node_affinity=k.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=k.V1NodeSelector(
                node_selector_terms=[k.V1NodeSelectorTerm(match_expressions=required)]
            )
            if required
            else None,
            preferred_during_scheduling_ignored_during_execution=preferred,
        )
    )


def _resources(spec: EksSpec):
    from kubernetes import client as k

    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if spec.gpus_per_node:
        limits["nvidia.com/gpu"] = requests["nvidia.com/gpu"] = str(spec.gpus_per_node)
    if spec.efa_per_node:
        limits["vpc.amazonaws.com/efa"] = requests["vpc.amazonaws.com/efa"] = str(spec.efa_per_node)
    if spec.cpu_per_node:
        requests["cpu"] = f"{spec.cpu_per_node:g}"
    if spec.memory_per_node_gib:
        requests["memory"] = f"{spec.memory_per_node_gib}Gi"
    return k.V1ResourceRequirements(limits=limits or None, requests=requests or None)


def _env(cfg: RunConfig, spec: EksSpec, run_dir: str, job_id: str, spec_source: str):
    from kubernetes import client as k

    def field_ref(path: str):
        return k.V1EnvVarSource(field_ref=k.V1ObjectFieldSelector(field_path=path))

    try:
        nccl = nccl_env.merged_env(spec.instance_type, spec.env, run_dir_var=f"$({RUN_DIR_ENV})")
    except ValueError as e:
        raise ConfigError(f"{spec_source}: {e}") from None
    return [
        k.V1EnvVar(name=RUN_DIR_ENV, value=run_dir),
        k.V1EnvVar(name="MLTRAIN_JOB_ID", value=job_id),
        k.V1EnvVar(name="MLTRAIN_MAX_RESTARTS", value=str(cfg.launch.max_restarts)),
        k.V1EnvVar(name="MLTRAIN_NPROC_PER_NODE", value=str(spec.procs_per_node)),
        k.V1EnvVar(name="MLTRAIN_RDZV_PORT", value=str(spec.rdzv_port)),
        k.V1EnvVar(name="MLTRAIN_RUN_CONFIG", value=dump_yaml(cfg)),
        k.V1EnvVar(name="NODE_NAME", value_from=field_ref("spec.nodeName")),
        k.V1EnvVar(name="POD_NAME", value_from=field_ref("metadata.name")),
        k.V1EnvVar(name="POD_UID", value_from=field_ref("metadata.uid")),
        *(k.V1EnvVar(name=v.name, value=v.value) for v in nccl),
    ]


def pod_template(
    cfg: RunConfig,
    spec: EksSpec,
    *,
    container_name: str,
    run_dir: str,
    job_id: str,
    failed: list[str],
    warnings: list[str],
    spec_source: str,
    restart_policy: str | None = None,
    labels: dict[str, str] | None = None,
):
    """The one pod both kinds run: GPUs + EFA, /dev/shm in memory, the run dir on the Lustre PVC."""
    from kubernetes import client as k

    port_name = "pytorchjob-port" if container_name == "pytorch" else "rdzv"
    container = k.V1Container(
        name=container_name,
        image=spec.image,
        image_pull_policy=spec.image_pull_policy,
        command=list(ENTRYPOINT),
        env=_env(cfg, spec, run_dir, job_id, spec_source),
        ports=[k.V1ContainerPort(name=port_name, container_port=spec.rdzv_port, protocol="TCP")],
        resources=_resources(spec),
        volume_mounts=[
            k.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
            k.V1VolumeMount(name="fsx", mount_path=spec.storage.mount_path),
        ],
        # EFA registers (pins) memory for RDMA
        security_context=k.V1SecurityContext(capabilities=k.V1Capabilities(add=["IPC_LOCK"])),
    )
    node_selector = {"node.kubernetes.io/instance-type": spec.instance_type, **spec.node_selector}
    health = None
    if cfg.launch.health_check:
        keep = {"MLTRAIN_RUN_DIR", "MLTRAIN_JOB_ID", "MLTRAIN_MAX_RESTARTS", "NODE_NAME", "POD_NAME", "POD_UID"}
        health = k.V1Container(
            name=HEALTH_CONTAINER,
            image=spec.image,
            image_pull_policy=spec.image_pull_policy,
            command=list(HEALTH_ENTRYPOINT),
            env=[e for e in container.env if e.name in keep]
            + [k.V1EnvVar(name="MLTRAIN_HEALTH_BURN_IN_S", value=f"{cfg.launch.health_burn_in_s:g}")],
            resources=_resources(spec),  # the same GPUs the trainer gets (init and main never run at once)
            volume_mounts=[k.V1VolumeMount(name="fsx", mount_path=spec.storage.mount_path)],
        )
    pod = k.V1PodSpec(
        init_containers=[health] if health else None,
        containers=[container],
        volumes=[
            k.V1Volume(
                name="dshm", empty_dir=k.V1EmptyDirVolumeSource(medium="Memory", size_limit=f"{spec.shm_size_gib}Gi")
            ),
            k.V1Volume(
                name="fsx",
                persistent_volume_claim=k.V1PersistentVolumeClaimVolumeSource(claim_name=spec.storage.pvc_name),
            ),
        ],
        node_selector=node_selector,
        tolerations=[k.V1Toleration(**t.model_dump(exclude_none=True)) for t in spec.tolerations] or None,
        affinity=_affinity(spec, failed, warnings, health_check=cfg.launch.health_check),
        # SIGTERM (eviction, spot reclaim) -> the wrapper asks the trainer to checkpoint; this long to do it
        termination_grace_period_seconds=cfg.launch.requeue_grace_s,
        restart_policy=restart_policy,
        service_account_name=spec.service_account,
        priority_class_name=spec.scheduling.priority_class,
        scheduler_name=POD_GROUP_SCHEDULERS.get(spec.scheduling.pod_group or "")
        if not spec.scheduling.kueue_queue
        else None,
    )
    return k.V1PodTemplateSpec(metadata=k.V1ObjectMeta(labels=labels) if labels else None, spec=pod)


def rbac_objects(cfg: RunConfig, spec: EksSpec) -> list[dict[str, Any]]:
    """With launch.health_check: the ClusterRole that lets the init container label a failing node (get and
    patch nodes, nothing else) and its binding to the pods' service account (spec.service_account, else the
    namespace's `default`). Applied before the job; shared by every run in the namespace."""
    if not cfg.launch.health_check:
        return []
    from kubernetes import client as k

    sa = spec.service_account or "default"
    labels = {"app.kubernetes.io/managed-by": "mltrain"}
    role = k.V1ClusterRole(
        api_version="rbac.authorization.k8s.io/v1",
        kind="ClusterRole",
        metadata=k.V1ObjectMeta(name=HEALTH_ROLE, labels=labels),
        rules=[k.V1PolicyRule(api_groups=[""], resources=["nodes"], verbs=["get", "patch"])],
    )
    binding = k.V1ClusterRoleBinding(
        api_version="rbac.authorization.k8s.io/v1",
        kind="ClusterRoleBinding",
        metadata=k.V1ObjectMeta(name=f"{HEALTH_ROLE}-{spec.namespace}-{sa}", labels=labels),
        role_ref=k.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=HEALTH_ROLE),
        subjects=[k.RbacV1Subject(kind="ServiceAccount", name=sa, namespace=spec.namespace)],
    )
    return [_sanitize(role), _sanitize(binding)]


def _sanitize(obj: Any) -> Any:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


def _metadata(cfg: RunConfig, spec: EksSpec, name: str, *, gang_label: bool) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": "mltrain", RUN_LABEL: job_name(cfg.name)}
    if gang_label and spec.scheduling.kueue_queue:
        labels[KUEUE_LABEL] = spec.scheduling.kueue_queue
        if spec.scheduling.workload_priority_class:
            labels[KUEUE_PRIORITY_LABEL] = spec.scheduling.workload_priority_class
    return {
        "name": name,
        "namespace": spec.namespace,
        "labels": labels,
        "annotations": {EXIT_CODES_ANNOTATION: policy.exit_code_table()},
    }


def _job_pod(
    cfg: RunConfig,
    spec: EksSpec,
    *,
    spec_source: str,
    run_dir_local: Path | None,
    job_id: str | None,
    container_name: str,
    restart_policy: str | None = None,
) -> tuple[RunConfig, str, Any, list[str]]:
    """What both kinds start from: the pods' config, the job name, the pod template and the warnings so far."""
    warnings = check_fit(cfg, spec, spec_source)
    run_dir = str(run_path(spec.storage.run_base_dir, cfg.name))
    # the pods train from this config: same run, base_dir = the shared base on the PVC
    cfg = cfg.model_copy(update={"base_dir": spec.storage.run_base_dir})
    if not spec.scheduling.kueue_queue and not spec.scheduling.pod_group and spec.nodes > 1:
        warnings.append(
            "no gang scheduling (scheduling.kueue_queue or scheduling.pod_group): pods may start one by one"
        )
    name = job_name(cfg.name)
    template = pod_template(
        cfg,
        spec,
        container_name=container_name,
        run_dir=run_dir,
        job_id=job_id or name,
        failed=policy.failed_nodes(run_dir_local),
        warnings=warnings,
        spec_source=spec_source,
        restart_policy=restart_policy,
    )
    return cfg, name, template, warnings


def render_pytorchjob(
    cfg: RunConfig,
    spec: EksSpec,
    *,
    spec_source: str = "cluster spec",
    run_dir_local: Path | None = None,
    job_id: str | None = None,
) -> Rendered:
    """A kubeflow.org/v1 PyTorchJob: Master + (nodes-1) Workers, restartPolicy ExitCode, backoffLimit = max_restarts."""
    from kubeflow.training import models as m

    cfg, name, template, warnings = _job_pod(
        cfg, spec, spec_source=spec_source, run_dir_local=run_dir_local, job_id=job_id, container_name="pytorch"
    )
    replicas = {"Master": m.KubeflowOrgV1ReplicaSpec(replicas=1, restart_policy="ExitCode", template=template)}
    if spec.nodes > 1:
        replicas["Worker"] = m.KubeflowOrgV1ReplicaSpec(
            replicas=spec.nodes - 1, restart_policy="ExitCode", template=template
        )
    scheduling = None
    if spec.scheduling.pod_group and not spec.scheduling.kueue_queue:
        scheduling = m.KubeflowOrgV1SchedulingPolicy(
            min_available=spec.nodes,
            schedule_timeout_seconds=spec.scheduling.schedule_timeout_s,
            priority_class=spec.scheduling.priority_class,
        )
    job = m.KubeflowOrgV1PyTorchJob(
        api_version=f"{PYTORCHJOB_GROUP}/{PYTORCHJOB_VERSION}",
        kind="PyTorchJob",
        metadata=_metadata(cfg, spec, name, gang_label=True),
        spec=m.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(spec.procs_per_node),
            pytorch_replica_specs=replicas,
            run_policy=m.KubeflowOrgV1RunPolicy(
                # counted for OnFailure pods only; with ExitCode the wrapper enforces the budget from restarts.jsonl
                backoff_limit=cfg.launch.max_restarts,
                clean_pod_policy="Running",
                scheduling_policy=scheduling,
            ),
        ),
    )
    return Rendered("pytorchjob", name, spec.namespace, [*rbac_objects(cfg, spec), _sanitize(job)], warnings)


def render_trainjob(
    cfg: RunConfig,
    spec: EksSpec,
    *,
    spec_source: str = "cluster spec",
    run_dir_local: Path | None = None,
    job_id: str | None = None,
) -> Rendered:
    """A Trainer v2 TrainJob and the namespaced TrainingRuntime it references (a JobSet with the restart table)."""
    from kubeflow_trainer_api import models as t

    cfg, name, template, warnings = _job_pod(
        cfg,
        spec,
        spec_source=spec_source,
        run_dir_local=run_dir_local,
        job_id=job_id,
        container_name="node",
        restart_policy="Never",
    )
    runtime_name = f"mltrain-{name}"
    pod_dict = _sanitize(template)
    job_spec = {
        "backoffLimit": 0,  # any charged failure fails the Job, the JobSet restarts it (failurePolicy.maxRestarts)
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "node",
                        "operator": "In",
                        "values": sorted(policy.PERMANENT_EXIT_CODES),
                    },
                },
                {
                    "action": "Ignore",
                    "onExitCodes": {"containerName": "node", "operator": "In", "values": [policy.EXIT_PREEMPTED]},
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": pod_dict,
    }
    pod_group = None
    if spec.scheduling.pod_group and not spec.scheduling.kueue_queue:
        src = {"scheduleTimeoutSeconds": spec.scheduling.schedule_timeout_s}
        pod_group = {"coscheduling": src} if spec.scheduling.pod_group == "coscheduling" else {"volcano": {}}
    runtime = _from_dict_exact(
        t.TrainerV1alpha1TrainingRuntime,
        {
            "apiVersion": f"{TRAINER_GROUP}/{TRAINER_VERSION}",
            "kind": "TrainingRuntime",
            "metadata": {
                **_metadata(cfg, spec, runtime_name, gang_label=False),
                "labels": {"trainer.kubeflow.org/framework": "torch", "app.kubernetes.io/managed-by": "mltrain"},
            },
            "spec": {
                "mlPolicy": {"numNodes": spec.nodes, "torch": {}},
                **({"podGroupPolicy": pod_group} if pod_group else {}),
                "template": {
                    "spec": {
                        "failurePolicy": {
                            "maxRestarts": cfg.launch.max_restarts,
                            "rules": [
                                {
                                    "name": "never-restart-config-errors",
                                    "action": "FailJobSet",
                                    "onJobFailureReasons": ["PodFailurePolicy"],
                                }
                            ],
                        },
                        "replicatedJobs": [
                            {
                                "name": "node",
                                "replicas": 1,
                                "template": {
                                    "metadata": {"labels": {TRAINER_ANCESTOR_LABEL: "trainer"}},
                                    "spec": job_spec,
                                },
                            }
                        ],
                    }
                },
            },
        },
    )
    trainjob = t.TrainerV1alpha1TrainJob(
        api_version=f"{TRAINER_GROUP}/{TRAINER_VERSION}",
        kind="TrainJob",
        metadata=t.IoK8sApimachineryPkgApisMetaV1ObjectMeta.from_dict(_metadata(cfg, spec, name, gang_label=True)),
        spec=t.TrainerV1alpha1TrainJobSpec(
            runtime_ref=t.TrainerV1alpha1RuntimeRef(api_group=TRAINER_GROUP, kind="TrainingRuntime", name=runtime_name),
            trainer=t.TrainerV1alpha1Trainer(
                image=spec.image,
                command=list(ENTRYPOINT),
                num_nodes=spec.nodes,
                num_proc_per_node=spec.procs_per_node,
                resources_per_node=t.IoK8sApiCoreV1ResourceRequirements.from_dict(
                    pod_dict["spec"]["containers"][0]["resources"]
                ),
            ),
        ),
    )
    objects = [*rbac_objects(cfg, spec), _dump_trainer(runtime), _dump_trainer(trainjob)]
    return Rendered("trainjob", name, spec.namespace, objects, warnings)


def _from_dict_exact(cls: Any, data: dict[str, Any]) -> Any:
    """Build a trainer-api model from a dict and make sure no key was dropped (the models ignore unknown ones)."""
    model = cls.from_dict(data)
    if model.to_dict() != data:
        raise RuntimeError(f"{cls.__name__}: the model dropped or changed fields of the rendered dict (a typo?)")
    return model


def _dump_trainer(model: Any) -> dict[str, Any]:
    """The trainer-api models' dict (camelCase aliases, unset fields left out)."""
    return model.to_dict()


def require_extra() -> None:
    """The `k8s` extra's packages, or one line saying how to install them."""
    missing = [m for m in ("kubernetes", "kubeflow.training", "kubeflow_trainer_api") if _missing(m)]
    if missing:
        raise ConfigError(f"mltrain k8s needs {', '.join(missing)}: pip install 'mltrain[k8s]'")


def _missing(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        return True


def render(
    cfg: RunConfig,
    spec: EksSpec,
    kind: str = "pytorchjob",
    *,
    spec_source: str = "cluster spec",
    run_dir_local: Path | None = None,
    job_id: str | None = None,
) -> Rendered:
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    require_extra()
    fn = render_pytorchjob if kind == "pytorchjob" else render_trainjob
    return fn(cfg, spec, spec_source=spec_source, run_dir_local=run_dir_local, job_id=job_id)


def local_run_dir(cfg: RunConfig, spec: EksSpec) -> Path | None:
    """The run dir as seen where `mltrain k8s` runs (for status and the failed-node list), if mounted here."""
    base = spec.storage.local_run_base_dir or spec.storage.run_base_dir
    p = run_path(base, cfg.name)
    return p if p.is_dir() else None
