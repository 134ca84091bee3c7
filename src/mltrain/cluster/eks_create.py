"""`mltrain cluster render|validate|create|delete --kind eks`: the EKS cluster through the real eksctl.

mltrain does not re-implement cluster creation: it renders and checks the ClusterConfig (and the
cluster-wide workloads, where the workloads renderer is present), runs `eksctl create cluster -f`, then
applies the workloads with the kubernetes client (create, or replace what exists). `--dry-run` prints the
exact commands and calls nothing; the real call needs eksctl on PATH and AWS credentials, each missing
one a single line, the same contract as the ParallelCluster path.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from mltrain.cluster.eks_cluster import (
    CLUSTER_FILE,
    dump_objects,
    dump_yaml,
    is_eksctl_config,
    validate_config,
    validate_spec,
)
from mltrain.errors import ClusterError
from mltrain.fsutil import atomic_write

EKSCTL_HINT = "install eksctl (a single binary: see the eksctl install guide) and configure AWS credentials"

Workloads = Callable[..., dict[str, list[dict[str, Any]]]]


def workloads_renderer() -> Workloads | None:
    """`render_workloads(spec, spec_path)` of mltrain.cluster.eks_workloads, or None where this build lacks it
    (then only the ClusterConfig is written)."""
    try:
        from mltrain.cluster import eks_workloads
    except ImportError:  # pragma: no cover - the module ships with the package
        return None
    return getattr(eks_workloads, "render_workloads", None)


def render_files(spec_path: Path) -> tuple[Any, dict[str, str], list[str]]:
    """(spec, file name -> text, problems): cluster.yaml and the workloads files, each problem one line.
    Nothing is rendered past a problem of the cluster config."""
    from mltrain.cluster.spec import load_eks_spec

    spec = load_eks_spec(spec_path)
    config, problems = validate_spec(spec)
    if problems:
        return spec, {}, problems
    files = {CLUSTER_FILE: dump_yaml(config, str(spec_path))}
    render_workloads = workloads_renderer()
    if render_workloads is not None:
        for name, objects in render_workloads(spec, spec_path).items():
            if name == CLUSTER_FILE:
                raise ClusterError(f"{spec_path}: the workloads renderer returned a file named {CLUSTER_FILE}")
            files[name] = dump_objects(objects, str(spec_path))
    return spec, files, []


def _problems(spec_path: Path, problems: list[str]) -> None:
    """Print every problem on its own line and stop with the first one as the error."""
    err = Console(stderr=True)
    for p in problems[1:]:
        err.print(f"[red]error:[/] {escape(f'{spec_path}: {p}')}", highlight=False, soft_wrap=True)
    more = f" (+{len(problems) - 1} more above)" if len(problems) > 1 else ""
    raise ClusterError(f"{spec_path}: {problems[0]}{more}")


def render_command(spec_path: Path, out_dir: Path | None, console: Console | None = None) -> dict[str, str]:
    """`mltrain cluster render --kind eks`: with -o DIR write every file there, else print the ClusterConfig."""
    console = console or Console()
    _spec, files, problems = render_files(spec_path)
    if problems:
        _problems(spec_path, problems)
    if out_dir is None:
        console.print(files[CLUSTER_FILE], markup=False, highlight=False, soft_wrap=True, end="")
        if len(files) > 1:
            Console(stderr=True).print(
                f"# {len(files) - 1} workloads file(s) not shown: -o DIR writes them", highlight=False
            )
        return files
    if out_dir.exists() and not out_dir.is_dir():
        raise ClusterError(f"{out_dir}: not a directory (--kind eks writes {CLUSTER_FILE} and the workloads there)")
    for name, text in files.items():
        atomic_write(out_dir / name, text)
    extra = "" if workloads_renderer() else " (no workloads renderer in this build: the ClusterConfig only)"
    console.print(f"wrote {', '.join(str(out_dir / n) for n in files)}{extra}", highlight=False, soft_wrap=True)
    return files


def validate_command(path: Path, data: dict[str, Any], console: Console | None = None) -> int:
    """`mltrain cluster validate FILE` on an eksctl ClusterConfig: 0 when valid, 1 with one line per problem."""
    console = console or Console()
    problems = validate_config(data)
    for p in problems:
        console.print(f"[red]error:[/] {escape(p)}", highlight=False, soft_wrap=True)
    if problems:
        console.print(f"{path}: {len(problems)} problem(s)", highlight=False, soft_wrap=True)
        return 1
    console.print(f"{path}: valid (eksctl ClusterConfig schema + mltrain checks)", highlight=False)
    return 0


# --------------------------------------------------------------------------- create / delete


def find_eksctl() -> str:
    exe = shutil.which("eksctl")
    if exe is None:
        raise ClusterError(f"eksctl is not on PATH; {EKSCTL_HINT}")
    return exe


def aws_credentials() -> bool:
    """Whether the standard AWS credential chain finds credentials (boto3 when installed, else the
    environment and the shared files); looked up, never printed."""
    try:
        import boto3
    except ImportError:
        if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
            return True
        home = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")
        return home.is_file()
    try:
        return boto3.Session().get_credentials() is not None
    except Exception:
        return False


def eksctl_argv(action: str, cluster_file: Path, exe: str = "eksctl", wait: bool = True) -> list[str]:
    if action == "create":
        return [exe, "create", "cluster", "-f", str(cluster_file)]
    if action == "delete":
        return [exe, "delete", "cluster", "-f", str(cluster_file)] + (["--wait"] if wait else [])
    raise ClusterError(f"cluster {action} --kind eks: not supported (create and delete are)")


def _kube_api() -> Any:
    """A kubernetes ApiClient from the kubeconfig eksctl just wrote (or in-cluster credentials)."""
    from mltrain.cluster.kube_api import kube_api_client

    return kube_api_client(ClusterError)


# who serves an API group the workloads use, when the cluster does not yet
_INSTALLERS = {
    "kueue.x-k8s.io": "install Kueue (https://kueue.sigs.k8s.io/docs/installation/)",
    "monitoring.coreos.com": "install the Prometheus operator (e.g. the kube-prometheus-stack Helm chart)",
    "kubeflow.org": "install the Kubeflow training operator (operator.yaml has the command)",
    "trainer.kubeflow.org": "install Kubeflow Trainer (operator.yaml has the command)",
}


def _install_hint(obj: dict[str, Any]) -> str:
    group = str(obj.get("apiVersion", "")).partition("/")[0]
    return _INSTALLERS.get(group, f"install what serves {group}") + ", then apply the file again"


def apply_objects(objects: list[dict[str, Any]], dynamic: Any, default_namespace: str = "default") -> list[str]:
    """Create each object, or replace it where it exists (409), in its own namespace (or `default_namespace`
    for a namespaced kind without one). `dynamic` is a kubernetes DynamicClient. Returns 'created|replaced
    Kind/name' lines."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    done = []
    for obj in objects:
        try:
            api = dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:  # its CRDs are not installed yet: say what to install, apply the rest
            name = (obj.get("metadata") or {}).get("name")
            done.append(f"skipped {obj['kind']}/{name}: {obj['apiVersion']} is not served here; {_install_hint(obj)}")
            continue
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        ns = (meta.get("namespace") or default_namespace) if api.namespaced else None
        kw = {"namespace": ns} if ns else {}
        what = f"{obj['kind']}/{name}" + (f" in {ns}" if ns else "")
        try:
            api.create(body=obj, **kw)
            done.append(f"created {what}")
        except ApiException as e:
            if e.status != 409:
                raise ClusterError(f"{what}: HTTP {e.status} {e.reason}") from None
            cur = api.get(name=name, **kw)
            body = {**obj, "metadata": {**meta, "resourceVersion": cur.metadata.resourceVersion}}
            try:
                api.replace(body=body, **kw)
            except ApiException as e2:
                raise ClusterError(f"{what}: replace failed: HTTP {e2.status} {e2.reason}") from None
            done.append(f"replaced {what}")
    return done


def eks_action(
    action: str,
    spec_path: Path,
    *,
    out_dir: Path | None = None,
    dry_run: bool = False,
    wait: bool = True,
    console: Console | None = None,
    dynamic: Any = None,
) -> int:
    """`mltrain cluster create|delete --kind eks`: 0 when done, ClusterError otherwise."""
    import yaml

    console = console or Console()
    spec, files, problems = render_files(spec_path)
    if problems:
        _problems(spec_path, problems)
    eksctl_argv(action, Path(CLUSTER_FILE))  # an unsupported action is one line before anything else
    write = out_dir is not None or not dry_run  # a dry run writes only the directory the user named
    out_dir = out_dir or Path(f"{spec.name}-eks")
    cluster_file = out_dir / CLUSTER_FILE
    exe = None
    if not dry_run:
        exe = find_eksctl()
        if not aws_credentials():
            raise ClusterError(
                "no AWS credentials (set AWS_PROFILE, or run `aws configure` / `aws sso login`); eksctl needs them"
            )
    if write:
        for name, text in files.items():
            atomic_write(out_dir / name, text)
    workloads = {n: t for n, t in files.items() if n != CLUSTER_FILE} if action == "create" else {}
    if exe is None:
        state = "written" if write else "rendered and checked, not written (dry run; -o DIR writes them)"
        console.print(f"# {cluster_file}: {state}", highlight=False, markup=False, soft_wrap=True)
        console.print(shlex.join(eksctl_argv(action, cluster_file, wait=wait)), highlight=False, markup=False)
        if workloads:
            console.print(
                "# then apply with the kubernetes client (create, or replace what exists): "
                + ", ".join(str(out_dir / n) for n in workloads),
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        elif action == "create":
            console.print("# no workloads renderer in this build: the ClusterConfig only", highlight=False)
        return 0
    argv = eksctl_argv(action, cluster_file, exe, wait=wait)
    console.print("$ " + shlex.join(["eksctl", *argv[1:]]), highlight=False, markup=False, soft_wrap=True)
    r = subprocess.run(argv)
    if r.returncode != 0:
        raise ClusterError(f"eksctl {action} cluster failed (exit {r.returncode}); see its output above")
    if workloads:
        if dynamic is None:
            from kubernetes.dynamic import DynamicClient

            dynamic = DynamicClient(_kube_api())
        for name, text in workloads.items():
            objects = [o for o in yaml.safe_load_all(text) if o]
            for line in apply_objects(objects, dynamic, spec.namespace):
                console.print(
                    f"{name}: {line}",
                    style="yellow" if line.startswith("skipped") else None,
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
    console.print(f"{spec.name}: {action} done", highlight=False)
    return 0


def is_eks_file(path: Path) -> tuple[bool, dict[str, Any]]:
    """(whether the YAML at `path` is an eksctl ClusterConfig, its data). Unreadable or non-mapping files are
    not: the caller's own reader reports them."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False, {}
    return is_eksctl_config(data), data if isinstance(data, dict) else {}


def spec_kind(path: Path) -> str:
    """'eks' for a spec with `kind: eks`, else 'pcluster' (unreadable files too: the loader says why)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "pcluster"
    return "eks" if isinstance(data, dict) and data.get("kind") == "eks" else "pcluster"
