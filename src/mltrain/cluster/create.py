"""`mltrain cluster create|update|delete|status`: drive the real ParallelCluster CLI.

mltrain does not re-implement cluster creation: it renders and validates the config, runs the
read-only preflight, then calls `pcluster create-cluster ...` (and friends) and follows
`pcluster describe-cluster` until the cluster is up (or has failed, with pcluster's reasons).
`--dry-run` prints the exact commands and calls nothing; it writes the rendered config only where
`--config FILE` asks (and says so first), never a default file into the working directory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mltrain.cluster.pcluster import dump_config, render
from mltrain.cluster.pcluster_validate import validate_report
from mltrain.cluster.spec import ClusterSpec, load_cluster_spec
from mltrain.errors import ClusterError
from mltrain.fsutil import atomic_write

Action = Literal["create", "update", "delete", "status"]
SUBCOMMAND = {
    "create": "create-cluster",
    "update": "update-cluster",
    "delete": "delete-cluster",
    "status": "describe-cluster",
}
DONE = {"create": "CREATE_COMPLETE", "update": "UPDATE_COMPLETE", "delete": "DELETE_COMPLETE"}
PCLUSTER_SPEC = "aws-parallelcluster==3.16.1"
INSTALL_HINT = (
    f"install the full CLI with `pipx install {PCLUSTER_SPEC}` (its own virtualenv, with every dependency), "
    "plus Node.js for the AWS CDK that pcluster runs (e.g. `nvm install --lts`), and configure AWS credentials"
)


def default_config_path(spec: ClusterSpec) -> Path:
    return Path(f"{spec.name}.pcluster.yaml")


def pcluster_argv(action: Action, spec: ClusterSpec, config_path: Path | None, exe: str = "pcluster") -> list[str]:
    """The exact `pcluster` command line for `action`."""
    assert spec.aws is not None
    argv = [exe, SUBCOMMAND[action], "--cluster-name", spec.name]
    if action in ("create", "update"):
        assert config_path is not None
        argv += ["--cluster-configuration", str(config_path)]
    return argv + ["--region", spec.aws.region]


def _pcluster_candidates() -> list[str]:
    """Every `pcluster` on PATH, in PATH order (an activated venv's validation-only one may come first)."""
    seen, out = set(), []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        exe = shutil.which("pcluster", path=d) if d else None
        if exe and os.path.realpath(exe) not in seen:
            seen.add(os.path.realpath(exe))
            out.append(exe)
    return out


def _installed_here() -> str | None:
    """The aws-parallelcluster version installed in this Python, if any."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aws-parallelcluster")
    except PackageNotFoundError:
        return None


def _missing_deps(exe: str) -> str:
    """' (aws-parallelcluster X without its runtime dependencies ...)' when `exe` is the one beside this
    Python, which mltrain's venv installs with --no-deps for schema validation only; else ''."""
    here = _installed_here()
    if here is None or Path(exe).parent != Path(sys.executable).parent:
        return ""
    return (
        f" (aws-parallelcluster {here} without its runtime dependencies: mltrain's venv installs it with "
        "--no-deps, for offline schema validation only)"
    )


def find_pcluster() -> str:
    """The first `pcluster` on PATH that runs (`pcluster version` succeeds). Otherwise one line saying
    what is installed, why it cannot create clusters, and the command that installs the full CLI."""
    broken: list[tuple[str, str]] = []
    for exe in _pcluster_candidates():
        try:
            r = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            broken.append((exe, f"it does not run: {e}"))
            continue
        if r.returncode == 0:
            return exe
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["no output"])[-1]
        broken.append((exe, f"`pcluster version` fails with {last.strip()[:200]}"))
    if broken:
        exe, why = broken[0]
        others = f" ({len(broken) - 1} more on PATH fail too)" if len(broken) > 1 else ""
        raise ClusterError(
            f"{exe} is installed but cannot create clusters{_missing_deps(exe)}: {why}{others}; {INSTALL_HINT}"
        )
    here = _installed_here()
    installed = (
        f": aws-parallelcluster {here} is installed in this Python for offline schema validation only "
        "(without its runtime dependencies, it cannot create clusters)"
        if here
        else ""
    )
    raise ClusterError(f"the ParallelCluster CLI `pcluster` is not on PATH{installed}; {INSTALL_HINT}")


def _run_json(argv: list[str]) -> tuple[int, dict[str, Any], str]:
    """Run a pcluster command; its stdout is JSON (errors too: {"message": ...})."""
    r = subprocess.run(argv, capture_output=True, text=True)
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else {}
    except json.JSONDecodeError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {"result": doc}
    return r.returncode, doc, (r.stderr.strip() or r.stdout.strip())


def _error_detail(doc: dict[str, Any], text: str) -> str:
    msg = doc.get("message") or text or "no output"
    extra = [
        f"{v.get('level', '')} {v.get('type', '')}: {v.get('message', '')}".strip()
        for v in (doc.get("configurationValidationErrors") or doc.get("validationMessages") or [])
        if isinstance(v, dict)
    ]
    return "; ".join([str(msg)] + extra[:5])


def render_config(spec: ClusterSpec, cluster_yaml: Path, config_path: Path | None) -> str:
    """Render + validate (refuse an invalid config) and, given a path, write it atomically; returns the text."""
    config = render(spec)
    errors, _warnings = validate_report(config)
    if errors:
        raise ClusterError(f"{cluster_yaml}: the rendered config is invalid: {errors[0]}")
    text = dump_config(config, str(cluster_yaml))
    if config_path is not None:
        atomic_write(config_path, text)
    return text


def dry_run_lines(
    action: Action, spec: ClusterSpec, cluster_yaml: Path, config_path: Path, preflight: bool, wrote: bool = False
) -> list[str]:
    """The commands the action would run. The config is written only when the user named it (--config)."""
    lines: list[str] = []
    if action in ("create", "update"):
        if wrote:
            lines.append(f"# wrote {config_path} (rendered from {cluster_yaml} and validated)")
        else:
            lines.append(
                f"# {config_path}: rendered from {cluster_yaml} and validated, not written "
                "(dry run; --config FILE writes it)"
            )
        if preflight:
            lines.append("# read-only AWS checks first; a FAIL stops here:")
            lines.append(shlex.join(["mltrain", "cluster", "preflight", str(cluster_yaml)]))
    lines.append(shlex.join(pcluster_argv(action, spec, config_path)))
    if action != "status":
        lines.append(f"# then, until {DONE[action]}:")
        lines.append(shlex.join(pcluster_argv("status", spec, None)))
    return lines


def describe(exe: str, spec: ClusterSpec) -> tuple[int, dict[str, Any], str]:
    return _run_json(pcluster_argv("status", spec, None, exe))


def _gone(rc: int, doc: dict[str, Any], text: str) -> bool:
    msg = str(doc.get("message") or text)
    return rc != 0 and ("does not exist" in msg or "not found" in msg.lower())


def wait_for(
    action: Action, exe: str, spec: ClusterSpec, console: Console, poll_s: float, timeout_min: float
) -> dict[str, Any]:
    """Poll describe-cluster, showing its status, until the action's end state; raise on *_FAILED."""
    start = time.monotonic()
    last = None
    with console.status(f"{spec.name}: waiting for {DONE[action]}") as status:
        while True:
            rc, doc, text = describe(exe, spec)
            if action == "delete" and _gone(rc, doc, text):
                console.print(f"{spec.name}: deleted", highlight=False)
                return {"clusterStatus": "DELETE_COMPLETE"}
            if rc != 0:
                raise ClusterError(f"pcluster describe-cluster failed: {_error_detail(doc, text)}")
            state = doc.get("clusterStatus", "?")
            stack = doc.get("cloudformationStackStatus", doc.get("cloudFormationStackStatus", "?"))
            elapsed = time.monotonic() - start
            if state != last:
                console.print(f"{elapsed / 60:5.1f} min  {spec.name}: {state} (stack {stack})", highlight=False)
                last = state
            status.update(f"{spec.name}: {state} (stack {stack}), {elapsed / 60:.1f} min; waiting for {DONE[action]}")
            if state == DONE[action]:
                return doc
            if str(state).endswith("_FAILED"):
                reasons = "; ".join(
                    f"{f.get('failureCode')}: {f.get('failureReason')}" for f in doc.get("failures") or []
                )
                raise ClusterError(
                    f"{spec.name}: {state}"
                    + (f": {reasons}" if reasons else "")
                    + f" (see `pcluster get-cluster-stack-events --cluster-name {spec.name} --region {spec.aws.region if spec.aws else ''}`)"
                )
            if elapsed > timeout_min * 60:
                raise ClusterError(
                    f"{spec.name}: still {state} after {timeout_min:g} min; follow it with `mltrain cluster status`"
                )
            time.sleep(poll_s)


def print_status(doc: dict[str, Any], console: Console) -> None:
    table = Table(show_header=False, pad_edge=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    head = doc.get("headNode") or {}
    for key, value in (
        ("cluster", doc.get("clusterName")),
        ("status", doc.get("clusterStatus")),
        ("stack", doc.get("cloudformationStackStatus")),
        ("compute fleet", doc.get("computeFleetStatus")),
        ("head node", " ".join(str(x) for x in (head.get("publicIpAddress"), head.get("privateIpAddress")) if x)),
        ("version", doc.get("version")),
        ("region", doc.get("region")),
    ):
        if value:
            table.add_row(key, escape(str(value)))
    for f in doc.get("failures") or []:
        table.add_row("failure", escape(f"{f.get('failureCode')}: {f.get('failureReason')}"))
    console.print(table)


def cluster_action(
    action: Action,
    cluster_yaml: Path,
    *,
    config_path: Path | None = None,
    dry_run: bool = False,
    preflight: bool = True,
    wait: bool = True,
    poll_s: float = 30.0,
    timeout_min: float = 120.0,
    console: Console | None = None,
    session: Any = None,
) -> int:
    """One of create/update/delete/status; 0 when done, ClusterError otherwise."""
    console = console or Console()
    spec = load_cluster_spec(cluster_yaml)
    if spec.aws is None:
        raise ClusterError(f"cluster {spec.name}: no aws: section; nothing to {action} with ParallelCluster")
    write = config_path is not None or not dry_run  # a dry run writes only the file the user named
    config_path = config_path or default_config_path(spec)
    exe = None if dry_run else find_pcluster()  # before writing anything: a missing CLI is one line
    if action in ("create", "update"):
        render_config(spec, cluster_yaml, config_path if write else None)
    if exe is None:
        for line in dry_run_lines(action, spec, cluster_yaml, config_path, preflight, wrote=write):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        return 0
    if action == "status":
        rc, doc, text = describe(exe, spec)
        if rc != 0:
            raise ClusterError(f"pcluster describe-cluster: {_error_detail(doc, text)}")
        print_status(doc, console)
        return 0
    if preflight and action in ("create", "update"):
        from mltrain.cluster.preflight import failed, print_checks, run_preflight

        checks = run_preflight(spec, session=session)
        print_checks(checks, console, title=f"preflight {spec.name}")
        if failed(checks):
            raise ClusterError(f"{spec.name}: preflight failed; fix the FAIL lines above (or --skip-preflight)")
    argv = pcluster_argv(action, spec, config_path, exe)
    console.print("$ " + shlex.join(["pcluster", *argv[1:]]), highlight=False, markup=False, soft_wrap=True)
    rc, doc, text = _run_json(argv)
    if rc != 0:
        raise ClusterError(f"pcluster {SUBCOMMAND[action]} failed: {_error_detail(doc, text)}")
    for v in doc.get("validationMessages") or []:
        if isinstance(v, dict):
            console.print(f"[yellow]{escape(str(v.get('level')))}:[/] {escape(str(v.get('message')))}", soft_wrap=True)
    if not wait:
        console.print(f"{spec.name}: {SUBCOMMAND[action]} started; follow it with `mltrain cluster status`")
        return 0
    doc = wait_for(action, exe, spec, console, poll_s, timeout_min)
    if action != "delete":
        print_status(doc, console)
    return 0
