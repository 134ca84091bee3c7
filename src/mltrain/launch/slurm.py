"""Slurm launcher: render one self-recovering sbatch script per run, submit it, follow it, cancel it.

The recovery policy runs with the batch script (templates/job.sbatch.j2) on the host after
`srun ... & wait`, because scontrol is not available inside enroot containers and because the
decision must survive this CLI process: USR1 -> control/stop -> the trainer checkpoints and writes
`preempted` -> requeue; hang/failed/lost rank -> requeue up to launch.max_restarts; config_error and
done -> never requeued. The script keeps signals, srun and scontrol in bash; its decisions and
records are batch_helper.py, copied beside it (BATCH_HELPER_MODULES). See docs/slurm.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time as _time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console

from mltrain.cluster.spec import ClusterSpec, load_cluster_spec
from mltrain.config import RunConfig, dump_yaml, layout_warning, load_run_config
from mltrain.errors import ConfigError, DataError, LaunchError, RunDirError
from mltrain.fsutil import append_jsonl, atomic_write, read_jsonl
from mltrain.launch import batch_helper, nccl_env
from mltrain.rundir import CONTROL_DIR, SLURM_DIR, default_base, resolve_run, run_path
from mltrain.slurm_time import TIME_FORMS, parse_slurm_time  # noqa: F401  (TIME_FORMS re-exported)
from mltrain.train.deadline import SOURCE_BLOCK, SOURCE_FLAG, Deadline, DeadlineError, format_utc, parse_deadline

SCRIPT_NAME = "job.sbatch"
# written beside the script and run by it with the host's python3 (stdlib only: mltrain may not be installed there)
BATCH_HELPER_MODULES = ("mltrain.launch.batch_helper", "mltrain.checkpoint_rule")
RUN_CONFIG_NAME = "run.yaml"  # the resolved config the workers train from (slurm/run.yaml)
JOBS_FILE = "jobs.jsonl"
CANCELLED_FILE = batch_helper.CANCELLED_FILE  # `mltrain cancel` marks the run: the batch script never requeues it
HYPERPOD_MARKER = Path("/opt/sagemaker_cluster")
# launch.health_check: NVML reads, torch/CUDA start-up and the burn-in's allocations on every GPU, beyond the burn-in
HEALTH_TIMEOUT_MARGIN_S = 300
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
    "REQUEUE_FED",
}


class SlurmUnreachable(LaunchError):
    """Slurm could not be asked about a job: its controller did not answer (restarting, failing over, the
    network) or the command hung. Not the same as "Slurm does not know the job", which callers act on
    (submit again, move the run, stop waiting): acting on this instead would start a second job."""


# what Slurm's client commands say when they cannot reach slurmctld (or slurmdbd, for sacct)
_NO_ANSWER = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Connection (refused|timed out)|"
    r"Zero Bytes were transmitted|Problem talking to the database"
)


class SubmitRefused(LaunchError):
    """`submit` refuses the request before sbatch runs (bad --nodes, a run dir it cannot use): a usage error,
    exit 2 like every other refusal of submit (config errors, failed trainer prechecks)."""

    exit_code = 2


@dataclass
class Submission:
    """Everything `submit` decided, before anything is written or submitted."""

    cfg: RunConfig
    cluster: ClusterSpec
    run_dir: Path
    config_path: Path
    script: str
    nodes: int
    warnings: list[str] = field(default_factory=list)
    deadline: Deadline | None = None  # handed to the trainer (MLTRAIN_DEADLINE)
    time: str | None = None  # the job's --time when --deadline capped it

    @property
    def script_path(self) -> Path:
        return self.run_dir / SLURM_DIR / SCRIPT_NAME


# --------------------------------------------------------------------------- rendering


def _template():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mltrain.launch", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["q"] = lambda v: shlex.quote(str(v))
    # inside "...": keep $VAR references working, escape what would end or alter the string
    env.filters["dq"] = lambda v: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`")
    return env.get_template("job.sbatch.j2")


def container_args(cluster: ClusterSpec) -> list[str]:
    """The Pyxis flags of every srun that runs python (training, the health check, mltrain's helpers), shell-quoted."""
    c = cluster.container
    if c is None:
        return []
    args = [f"--container-image={shlex.quote(c.image)}"]
    if c.mounts:
        args.append(f"--container-mounts={shlex.quote(','.join(c.mounts))}")
    if c.workdir:
        args.append(f"--container-workdir={shlex.quote(c.workdir)}")
    return [*args, "--no-container-mount-home"]


def detect_hyperpod(cluster: ClusterSpec) -> bool:
    """SageMaker HyperPod: the spec says so, or (when unset) this login node has its marker dir."""
    if cluster.slurm.hyperpod is not None:
        return cluster.slurm.hyperpod
    return HYPERPOD_MARKER.exists()


def nproc_per_node(cluster: ClusterSpec) -> int:
    return cluster.slurm.nproc_per_node or cluster.gpus_per_node or 1


def run_dir_for(cfg: RunConfig, cluster: ClusterSpec) -> Path:
    """`<cluster.run_base_dir>/runs/<name>`; a relative base is taken from the submit directory."""
    return run_path(os.path.abspath(cluster.run_base_dir), cfg.name)


def _python_env() -> tuple[str | None, str]:
    """(venv activate script or None, bin dir) of the interpreter running mltrain."""
    activate = Path(sys.prefix) / "bin" / "activate"
    if sys.prefix != sys.base_prefix and activate.is_file():
        return str(activate), str(Path(sys.prefix) / "bin")
    return None, str(Path(sys.executable).parent)


def normalize_time(time: str) -> tuple[str, int]:
    """`--time` in any form sbatch takes (slurm_time.TIME_FORMS) as (HH:MM:SS or D-HH:MM:SS, seconds)."""
    try:
        return parse_slurm_time(time)
    except ValueError as e:
        raise ConfigError(f"--time {time!r}: {e}") from None


def time_limit_s(time: str) -> int:
    """Seconds of a Slurm time limit (any form normalize_time takes)."""
    return normalize_time(time)[1]


def check_instance_type(cluster: ClusterSpec) -> None:
    """The same check plan and `cluster render` make: an unknown instance type (a typo such as p5.96xlarge)
    would otherwise render without its EFA settings. `local` is the CPU test cluster."""
    if cluster.instance_type == "local":
        return
    from mltrain.cluster.catalog import get_instance
    from mltrain.errors import ClusterError

    try:
        get_instance(cluster.instance_type, cluster.instance_types)
    except ClusterError as e:
        raise ConfigError(f"cluster {cluster.name}: {e}") from None


def render_sbatch(
    cfg: RunConfig,
    cluster: ClusterSpec,
    run_dir: Path,
    *,
    nodes: int | None = None,
    time: str | None = None,
    hyperpod: bool | None = None,
    run_yaml: str | os.PathLike[str] | None = None,
    deadline: Deadline | None = None,
) -> str:
    """The batch script text. Deterministic for a given config, spec and run dir (golden-tested).

    A script run (`script:`) needs `run_yaml`, the run config file it came from: its script path and working
    directory are relative to that file's directory."""
    if nodes is not None and nodes < 1:
        raise SubmitRefused(f"--nodes {nodes}: must be at least 1")
    nodes = nodes or cluster.nodes
    if nodes > cluster.nodes:
        raise SubmitRefused(f"--nodes {nodes}: cluster {cluster.name} has only {cluster.nodes} nodes")
    check_instance_type(cluster)
    time, limit_s = normalize_time(time or cluster.slurm.time)
    lc = cfg.launch
    if lc.requeue_grace_s >= limit_s:
        raise ConfigError(
            f"launch.requeue_grace_s={lc.requeue_grace_s}: must be shorter than the time limit {time} "
            f"({limit_s} s), else every allocation is asked to stop before it trains"
        )
    if lc.min_nodes is not None and lc.min_nodes > nodes:
        raise ConfigError(f"launch.min_nodes={lc.min_nodes}: larger than the job's {nodes} nodes")
    if re.search(r"\s", str(run_dir)):
        raise SubmitRefused(f"run dir {run_dir}: #SBATCH paths cannot contain whitespace")
    if hyperpod is None:
        hyperpod = detect_hyperpod(cluster)
    try:
        env = nccl_env.merged_env(cluster.instance_type, cluster.env)
    except ValueError as e:
        raise ConfigError(f"cluster {cluster.name}: {e}") from None
    activate, bin_dir = (None, "")
    if cluster.container is None:
        if cluster.venv:
            activate, bin_dir = str(Path(cluster.venv) / "bin" / "activate"), str(Path(cluster.venv) / "bin")
        else:
            activate, bin_dir = _python_env()
    return _template().render(
        run_name=cfg.name,
        script_run=_script_context(cfg, run_yaml, run_dir),
        job_name=cfg.name,
        cluster_name=cluster.name,
        instance_type=cluster.instance_type,
        nodes=nodes,
        nproc=nproc_per_node(cluster),
        gpus_per_node=cluster.gpus_per_node,
        exclusive=cluster.slurm.exclusive,
        partition=cluster.slurm.partition,
        account=cluster.slurm.account,
        qos=cluster.slurm.qos,
        time=time,
        grace_s=lc.requeue_grace_s,
        time_limit_s=limit_s,
        extra_sbatch=cluster.slurm.extra_sbatch,
        run_dir=str(run_dir),
        config_path=str(run_dir / SLURM_DIR / RUN_CONFIG_NAME),
        max_restarts=lc.max_restarts,
        max_in_place=lc.max_in_place_restarts,
        max_preemptions=lc.max_preemptions,
        min_nodes=lc.min_nodes or nodes,
        exclude_failed_nodes=cluster.slurm.exclude_failed_nodes,
        env=env,
        container=cluster.container,
        container_args=container_args(cluster),
        activate=activate,
        bin_dir=bin_dir,
        rdzv_port=cluster.slurm.rdzv_port,
        exit_grace_s=cluster.slurm.exit_grace_s,
        hyperpod=hyperpod,
        health_check=lc.health_check,
        health_burn_in_s=f"{lc.health_burn_in_s:g}",
        health_timeout_s=int(lc.health_burn_in_s) + HEALTH_TIMEOUT_MARGIN_S,
        prometheus_port=cfg.log.prometheus.port if cfg.log.prometheus.enabled else None,
        deadline=deadline,
    )


# sbatch --signal: "the signal may be sent up to 60 seconds earlier than specified" (Slurm's event resolution)
SIGNAL_EARLY_S = 60


def job_deadline(text: str, cluster: ClusterSpec, now: float | None = None) -> Deadline:
    """`mltrain submit --deadline TEXT`. On a capacity-block cluster TEXT is the block's end and the run's
    deadline is BLOCK_TERMINATION_LEAD_S before it, when EC2 starts terminating the block's instances."""
    now = _time.time() if now is None else now
    at = parse_deadline(text, now)
    if cluster.aws is not None and cluster.aws.capacity_type == "capacity_block":
        from mltrain.cluster.capacity import BLOCK_TERMINATION_LEAD_S

        d = Deadline(at - BLOCK_TERMINATION_LEAD_S, SOURCE_BLOCK)
        if d.at <= now:
            raise DeadlineError(
                f"--deadline {text!r}: the capacity block's instances start terminating at {format_utc(d.at)} "
                f"({BLOCK_TERMINATION_LEAD_S // 60} min before its end), which is in the past"
            )
        return d
    if at <= now:
        raise DeadlineError(f"--deadline {text!r}: {format_utc(at)} is in the past")
    return Deadline(at, SOURCE_FLAG)


def capped_time(time: str, deadline: Deadline, grace_s: int, now: float | None = None) -> str | None:
    """The job's --time (in whole minutes, rounded up) when the time until the deadline plus the USR1 grace (and
    SIGNAL_EARLY_S) is shorter than `time`, else None: Slurm does not hold the nodes much past the deadline, and
    the time limit's USR1 warning never comes before it (so the stop before the deadline is the run's last, not
    a requeue)."""
    now = _time.time() if now is None else now
    limit_s = normalize_time(time)[1]
    cap_s = max(60, math.ceil((deadline.at - now + grace_s + SIGNAL_EARLY_S) / 60) * 60)
    return str(cap_s // 60) if cap_s < limit_s else None


def batch_helper_files() -> dict[str, str]:
    """The Python files the batch script runs (batch_helper.py and the checkpoint rule it imports), by name."""
    import importlib

    files = {}
    for name in BATCH_HELPER_MODULES:
        path = Path(importlib.import_module(name).__file__ or "")
        files[path.name] = path.read_text()
    return files


def install_batch_helper(run_dir: Path) -> None:
    """Write the batch script's Python into `<run>/slurm/` (rewritten at every submit, like the script)."""
    for name, text in batch_helper_files().items():
        atomic_write(run_dir / SLURM_DIR / name, text)


def _script_context(cfg: RunConfig, run_yaml: str | os.PathLike[str] | None, run_dir: Path) -> dict | None:
    """What the template needs for a script run (absolute script path and working directory, the ranks'
    environment, the checkpoint dir); None for the built-in trainer."""
    if cfg.script is None:
        return None
    if run_yaml is None:
        raise LaunchError(f"run {cfg.name}: a script run needs its run config file (script.path is relative to it)")
    from mltrain.launch import script as script_launch

    return script_launch.slurm_context(cfg, run_yaml, run_dir)


def prepare_submission(
    run_yaml: str | Path,
    cluster_yaml: str | Path,
    overrides: list[str] | None = None,
    nodes: int | None = None,
    time: str | None = None,
    hyperpod: bool | None = None,
    deadline: str | None = None,
) -> Submission:
    """Load both configs, point the run at the cluster's shared base dir, render the script."""
    cluster = load_cluster_spec(cluster_yaml)
    cfg = load_run_config(run_yaml, list(overrides or []))
    run_dir = run_dir_for(cfg, cluster)
    # the workers run `mltrain train <run>/slurm/run.yaml`: same config, base_dir = the shared base
    cfg = cfg.model_copy(update={"base_dir": str(run_dir.parent.parent)})
    dl = job_deadline(deadline, cluster) if deadline is not None else None
    capped = capped_time(time or cluster.slurm.time, dl, cfg.launch.requeue_grace_s) if dl is not None else None
    time = capped or time
    script = render_sbatch(
        cfg, cluster, run_dir, nodes=nodes, time=time, hyperpod=hyperpod, run_yaml=run_yaml, deadline=dl
    )
    if cfg.script is not None:
        # slurm/run.yaml lives elsewhere: its script path must not depend on the original file's directory
        from mltrain.launch.script import resolve_script

        script_path, workdir = resolve_script(cfg, run_yaml)  # checked (one line) by render_sbatch already
        cfg = cfg.model_copy(update={"script": cfg.script.model_copy(update={"path": str(script_path)})})
    warnings = [
        f"cluster env sets a known-bad variable: {w}"
        for w in nccl_env.known_bad_in([nccl_env.EnvVar(k, v, "") for k, v in cluster.env.items()])
    ]
    if cluster.container is not None and cluster.container.mounts:
        dsts = [m.split(":")[1] if ":" in m else m for m in cluster.container.mounts]
        seen = {"run dir": run_dir, **({"script dir": workdir} if cfg.script is not None else {})}
        for what, path in seen.items():
            if not any(str(path).startswith(d.rstrip("/") + "/") for d in dsts):
                warnings.append(f"{what} {path} is not under any container mount ({', '.join(dsts)})")
    world = (nodes or cluster.nodes) * nproc_per_node(cluster)
    if world > 1 and cfg.script is None and cfg.train.parallel == "none" and cfg.parallel is None:
        warnings.append(f"{world} processes but train.parallel=none; set train.parallel=ddp or fsdp")
    if cfg.script is None and (layout_problem := layout_warning(cfg, world)):
        warnings.append(layout_problem)
    if cfg.script is not None and dl is not None:
        warnings.append(
            "--deadline with a script run: only the job's --time is capped (your script gets the time limit's "
            "USR1 stop request, at the deadline)"
        )
    return Submission(
        cfg,
        cluster,
        run_dir,
        run_dir / SLURM_DIR / RUN_CONFIG_NAME,
        script,
        nodes or cluster.nodes,
        warnings,
        deadline=dl,
        time=capped,
    )


@contextlib.contextmanager
def generated_script_run(script: str | os.PathLike[str], args: list[str]) -> Iterator[Path]:
    """`mltrain submit --script train.py -- ARGS`: a run config `{name: <script stem>, script: {path, args}}`,
    written (hidden) in the current directory for the submit only: that directory is the script's working
    directory on the nodes, as for `python train.py ARGS` (the submitted copies carry absolute paths)."""
    path = Path(script).resolve()
    if not path.is_file():
        raise ConfigError(f"--script {script}: not a file")
    name = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip(".-_") or "script"
    data = {"name": name, "script": {"path": str(path), "args": [str(a) for a in args]}}
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mltrain-submit-", suffix=".yaml", dir=os.getcwd())
        with os.fdopen(fd, "w") as fh:
            fh.write(yaml.safe_dump(data, sort_keys=False))
    except OSError as e:
        raise LaunchError(f"--script {script}: cannot write a run config in {os.getcwd()}: {e.strerror or e}") from None
    try:
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


# --------------------------------------------------------------------------- scheduler queries


def _run(cmd: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str] | None:
    """Run a Slurm client command; None when it is not installed or hangs."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (FileNotFoundError, subprocess.TimeoutExpired, PermissionError):
        return None


def _ask(cmd: list[str], unanswered: list[str], timeout: float = 20) -> subprocess.CompletedProcess[str] | None:
    """A Slurm query that answered (exit 0), else None; a query that could not reach Slurm (or hung) adds
    Slurm's line to `unanswered`, one that got "no such job" or is not installed adds nothing."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        unanswered.append(f"`{cmd[0]}` did not answer within {timeout:.0f} s")
        return None
    except (FileNotFoundError, PermissionError):
        return None
    if p.returncode == 0:
        return p
    said = next((line.strip() for line in p.stderr.splitlines() if _NO_ANSWER.search(line)), None)
    if said:
        unanswered.append(said)
    return None


def query_job(job_id: str) -> dict[str, str] | None:
    """Scheduler view of a job: squeue first, then scontrol, then sacct (only if accounting works).

    Returns {"state", "reason", "nodes", "restarts", "source"} or None when no source knows the job. A
    cluster without accounting (sacct exits 1) is normal. Raises SlurmUnreachable when no source answered
    and Slurm could not be asked: "unknown" must not be read as "gone"."""
    unanswered: list[str] = []
    p = _ask(["squeue", "-h", "-j", str(job_id), "-o", "%T|%r|%N"], unanswered)
    info: dict[str, str] | None = None
    if p is not None and p.stdout.strip():
        state, reason, nodelist = (p.stdout.strip().splitlines()[0].split("|") + ["", ""])[:3]
        info = {"state": state, "reason": reason, "nodes": nodelist, "restarts": "", "source": "squeue"}
    # scontrol asks the same controller: not again when squeue could not reach it (~20 s of retries each)
    p = None if unanswered else _ask(["scontrol", "-o", "show", "job", str(job_id)], unanswered)
    if p is not None and p.stdout.strip():
        kv = dict(re.findall(r"(\w+)=(\S*)", p.stdout))
        sc = {
            "state": kv.get("JobState", ""),
            "reason": kv.get("Reason", ""),
            "nodes": kv.get("NodeList", "") if kv.get("NodeList") != "(null)" else "",
            "restarts": kv.get("Restarts", ""),
            "exit_code": kv.get("ExitCode", ""),
            "source": "scontrol",
        }
        if info is None:
            return sc
        info["restarts"] = sc["restarts"]
        return info
    if info is not None:
        return info
    p = _ask(["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "State,Reason,NodeList,ExitCode"], unanswered)
    if p is not None and p.stdout.strip():
        parts = (p.stdout.strip().splitlines()[-1].split("|") + ["", "", ""])[:4]
        return {
            "state": parts[0].split()[0] if parts[0] else "",
            "reason": parts[1],
            "nodes": parts[2],
            "restarts": "",
            "exit_code": parts[3],
            "source": "sacct",
        }
    if unanswered:
        raise SlurmUnreachable(f"Slurm did not answer about job {job_id}: {unanswered[0]}")
    return None


# --------------------------------------------------------------------------- run dir helpers


def find_run(ref: str | os.PathLike[str]) -> Path:
    """A run dir by path or name; also finds runs that were submitted but have not started yet."""
    try:
        return resolve_run(ref)
    except RunDirError:
        p = Path(ref)
        for cand in (p, run_path(default_base(), str(ref))):
            if (cand / SLURM_DIR / JOBS_FILE).is_file() or (cand / SLURM_DIR / SCRIPT_NAME).is_file():
                return cand
        raise


def read_jobs(run_dir: Path) -> list[dict]:
    """Records from `<run>/slurm/jobs.jsonl` (submit and cancel events), oldest first."""
    return read_jsonl(run_dir / SLURM_DIR / JOBS_FILE)


def latest_job_id(run_dir: Path) -> str | None:
    subs = [r for r in read_jobs(run_dir) if r.get("event", "submit") == "submit" and r.get("job_id")]
    return str(subs[-1]["job_id"]) if subs else None


# --------------------------------------------------------------------------- commands


def submit_run(
    run_yaml: str | Path,
    cluster_yaml: str | Path,
    overrides: list[str] | None = None,
    nodes: int | None = None,
    time: str | None = None,
    dry_run: bool = False,
    console: Console | None = None,
    deadline: str | None = None,
) -> str | None:
    """`mltrain submit`: render `<run>/slurm/job.sbatch`, `sbatch --parsable` it, record the job id."""
    console = console or Console()
    sub = prepare_submission(run_yaml, cluster_yaml, overrides, nodes=nodes, time=time, deadline=deadline)
    if dry_run:
        console.out(sub.script, highlight=False, end="")
        for w in sub.warnings:
            Console(stderr=True).print(f"[yellow]warning:[/] {w}", highlight=False)
        return None
    for w in sub.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if shutil.which("sbatch") is None:
        raise LaunchError("sbatch not found: run `mltrain submit` on a Slurm login node (--dry-run prints the script)")
    prev = latest_job_id(sub.run_dir)
    if prev is not None:
        try:
            info = query_job(prev)
        except SlurmUnreachable as e:
            raise LaunchError(
                f"run {sub.cfg.name}: cannot tell whether its job {prev} is still queued ({e}); not submitting "
                "a second one: try again once Slurm answers"
            ) from None
        if info is not None and info["state"] in ACTIVE_STATES:
            raise SubmitRefused(
                f"run {sub.cfg.name} already has job {prev} ({info['state']}); `mltrain cancel {sub.run_dir}` first"
            )
    precheck_submission(sub)
    try:
        atomic_write(sub.config_path, dump_yaml(sub.cfg))
        atomic_write(sub.script_path, sub.script, mode=0o755)
        install_batch_helper(sub.run_dir)
        if sub.cfg.script is not None:  # no trainer writes it on the nodes: status and `mltrain report` read it
            from mltrain.launch.script import script_config_yaml
            from mltrain.rundir import CONFIG_FILE

            atomic_write(sub.run_dir / CONFIG_FILE, script_config_yaml(sub.cfg))
        (sub.run_dir / CANCELLED_FILE).unlink(missing_ok=True)
    except OSError as e:
        raise LaunchError(f"{sub.run_dir}: cannot write the job files: {e.strerror or e}") from None
    p = _run(["sbatch", "--parsable", str(sub.script_path)], timeout=60)
    if p is None:
        raise LaunchError("sbatch not found (or timed out): is this a Slurm login node? (--dry-run prints the script)")
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip() or f"exit {p.returncode}").splitlines()[-1]
        if "configuration source" in msg:
            msg += " (is SLURM_CONF set? for the local test cluster: source <its state dir>/env.sh, see scripts/local-slurm/common.sh)"
        raise LaunchError(f"sbatch {sub.script_path}: {msg}")
    job_id = p.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise LaunchError(f"sbatch {sub.script_path}: unexpected output {p.stdout.strip()!r}")
    append_jsonl(
        sub.run_dir / SLURM_DIR / JOBS_FILE,
        {
            "event": "submit",
            "job_id": job_id,
            "time": _time.time(),
            "nodes": sub.nodes,
            "partition": sub.cluster.slurm.partition,
            "cluster": sub.cluster.name,
            "script": str(sub.script_path),
        },
    )
    console.print(
        f"submitted job {job_id}: run {sub.cfg.name}, {sub.nodes} nodes, partition "
        f"{sub.cluster.slurm.partition}; run dir {sub.run_dir}",
        highlight=False,
        soft_wrap=True,
    )
    if sub.deadline is not None:
        console.print(f"  {deadline_note(sub)}", highlight=False, soft_wrap=True)
    console.print(
        f"  follow: mltrain logs {sub.run_dir} -f    status: mltrain status {sub.run_dir}",
        highlight=False,
        soft_wrap=True,
    )
    return job_id


def deadline_note(sub: Submission) -> str:
    """'deadline 2026-12-20T11:00:00Z (capacity block end): the last checkpoint comes before it, not requeued;
    --time capped to 95 minutes'."""
    assert sub.deadline is not None
    note = f"deadline {sub.deadline.iso} ({sub.deadline.source}): the last checkpoint comes before it, not requeued"
    return note + (f"; --time capped to {sub.time} minutes" if sub.time else "")


def precheck_submission(sub: Submission) -> None:
    """What would make the job fail seconds after it starts, refused before sbatch: the start checks
    (mltrain.train.start_checks: data manifest, tokenizer vocab, init_from, run-dir compatibility) and a
    live run-dir lease."""
    from mltrain.train.start_checks import check_lease_free, precheck

    if sub.cfg.script is None:  # a script run: its script was resolved by prepare_submission; the rest is its own
        try:
            precheck(sub.cfg)  # raises DataError / RunDirError / ConfigError with one line
        except DataError as e:  # e.g. no prepared data: refused like the config errors beside it
            e.exit_code = 2
            raise
    check_lease_free(sub.run_dir)


def log_files(run_dir: Path, job_id: str | None = None) -> list[Path]:
    """The scheduler logs of a job (stdout, stderr), newest job by default."""
    job_id = job_id or latest_job_id(run_dir)
    if job_id is None:
        return []
    return [run_dir / SLURM_DIR / f"{job_id}.out", run_dir / SLURM_DIR / f"{job_id}.err"]


def cancel_run(run: str, console: Console | None = None) -> None:
    """`mltrain cancel`: mark the run cancelled (so the batch script does not requeue), then scancel."""
    console = console or Console()
    run_dir = find_run(run)
    job_id = latest_job_id(run_dir)
    if job_id is None:
        raise LaunchError(f"{run_dir}: no Slurm job recorded in {SLURM_DIR}/{JOBS_FILE}")
    (run_dir / CONTROL_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CANCELLED_FILE, f"{job_id}\n")
    p = _run(["scancel", job_id])
    if p is None:
        raise LaunchError("scancel not found (or timed out)")
    if p.returncode != 0:
        raise LaunchError(f"scancel {job_id}: {(p.stderr.strip() or f'exit {p.returncode}').splitlines()[-1]}")
    append_jsonl(run_dir / SLURM_DIR / JOBS_FILE, {"event": "cancel", "job_id": job_id, "time": _time.time()})
    console.print(f"cancelled job {job_id} (run {run_dir.name}); it will not be requeued", highlight=False)


__all__ = [
    "Submission",
    "SubmitRefused",
    "normalize_time",
    "cancel_run",
    "find_run",
    "install_batch_helper",
    "latest_job_id",
    "prepare_submission",
    "query_job",
    "SlurmUnreachable",
    "read_jobs",
    "render_sbatch",
    "submit_run",
]
