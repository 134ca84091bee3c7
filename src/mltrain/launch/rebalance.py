"""`mltrain fleet rebalance`: give the nodes of finished models (and nodes no model holds) to the models
behind their date or finishing last; `--apply` moves them.

The proposal reads the fleet record (mltrain.launch.fleet_state) and each run's status. A running model's
remaining work is (total - step) x its measured step time x its nodes, in node-seconds; more nodes divide it
(the planner's weak-scaling assumption). Free nodes go one at a time, like the planner's min-makespan split,
to the model behind its planned finish that finishes last, else to the one finishing last; a model only
takes node counts it can resume on exactly: its global batch (from the newest checkpoint) must split over
the new data-parallel ranks x its micro batch, and the planned layout at that count must keep its tensor,
context and pipeline degrees. Nodes are never taken back from a running model.

`--apply`, per model that gains nodes: mark the run so its batch script does not requeue it (the marker
`mltrain cancel` writes), ask its trainer to stop (control/stop: it checkpoints at the next step boundary and
exits), wait for the job to leave the queue, check the newest committed checkpoint is the step it stopped
at, then resubmit the run on the new node count with the planned layout for that count. The world-size
resume keeps the global batch (grad_accum absorbs the change) and the loader's global sample position, so
no step or sample is lost or repeated. The fleet record is updated (atomically) only after the resubmit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from rich.console import Console

from mltrain import checkpoint_rule, rundir
from mltrain.errors import ClusterError, LaunchError, MltrainError
from mltrain.launch.fleet_state import FleetState, fleet_state_path, read_fleet_state, write_fleet_state

STOP_TIMEOUT_S = 600.0  # a stop checkpoint of a large model on a slow file system takes minutes
POLL_S = 2.0
STOP_WHY = "mltrain fleet rebalance"  # the stop file's first line: the batch script reads it as a user's stop


# --------------------------------------------------------------------------- the proposal


@dataclass
class ModelMove:
    """One model's line of the proposal."""

    name: str
    run_dir: str
    state: str  # the run's status word (running, done, pending, ...)
    step: int | None
    total_steps: int | None
    old_nodes: int
    new_nodes: int
    old_finish: float | None  # estimated, epoch seconds; None when not running
    new_finish: float | None
    planned_finish: float
    remaining_node_s: float | None
    why: str
    skipped: list[str] = field(default_factory=list)  # node counts it cannot resume on, with the reason
    overrides: list[str] = field(default_factory=list)  # the planned layout at new_nodes, as `--set`s
    run_config: str | None = None

    @property
    def gains(self) -> bool:
        return self.new_nodes > self.old_nodes


@dataclass
class Proposal:
    fleet: str
    cluster: str
    record: str
    time: float
    cluster_nodes: int
    free_nodes: int  # free before the moves
    left_free: int  # still free after them
    models: list[ModelMove]
    notes: list[str] = field(default_factory=list)

    @property
    def moves(self) -> list[ModelMove]:
        return [m for m in self.models if m.gains]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for m, md in zip(self.models, d["models"], strict=True):
            md.pop("overrides")
            md.pop("run_config")
            md["moves"] = m.gains
        d["nothing_to_move"] = not self.moves
        return d


@dataclass(frozen=True)
class _ResumeShape:
    """What a run's exact resume on another world size depends on."""

    global_batch: int  # sequences per optimizer step (checkpoint's dp x micro x accum)
    micro_batch_size: int
    model_parallel: tuple[int, int, int]  # tp, cp, pp
    dp_shard_fixed: int | None  # a `parallel.dp_shard` other than -1: the world size is pinned
    script: bool


def _read_yaml_dict(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _resume_shape(run_dir: Path, old_world: int) -> _ResumeShape:
    """From the resolved config the job trains from (slurm/run.yaml, else config.yaml) and the newest
    committed checkpoint's trainer state (the global batch it trained with; the config when none)."""
    from mltrain.launch.slurm import RUN_CONFIG_NAME

    cfg = _read_yaml_dict(run_dir / rundir.SLURM_DIR / RUN_CONFIG_NAME) or _read_yaml_dict(run_dir / rundir.CONFIG_FILE)
    from mltrain.config import TrainConfig

    train = cfg.get("train") or {}
    micro = int(train.get("micro_batch_size") or TrainConfig.model_fields["micro_batch_size"].default)
    accum = int(train.get("grad_accum_steps") or TrainConfig.model_fields["grad_accum_steps"].default)
    par = cfg.get("parallel") or {}
    tp, cp, pp = (int(par.get(k) or 1) for k in ("tp", "cp", "pp"))
    dp_shard = par.get("dp_shard", -1) if par else -1
    dp = max(1, old_world // (tp * cp * pp))
    global_batch = dp * micro * accum
    ckpts = rundir.committed_checkpoints(run_dir)
    if ckpts:
        try:
            st = json.loads((ckpts[-1][1] / checkpoint_rule.TRAINER_STATE).read_text())
            loader = st.get("loader") or {}
            w = int(st.get("dp_size") or st.get("world_size") or loader.get("world_size") or dp)
            m = int(st.get("micro_batch_size") or loader.get("micro_batch_size") or micro)
            a = int(st.get("grad_accum_steps") or accum)
            global_batch = w * m * a
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # unreadable state: the trainer will refuse it too; the config's batch is the best guess
    return _ResumeShape(
        global_batch=global_batch,
        micro_batch_size=micro,
        model_parallel=(tp, cp, pp),
        dp_shard_fixed=None if dp_shard in (-1, None) else int(dp_shard),
        script=cfg.get("script") is not None,
    )


def resume_refusal(shape: _ResumeShape, nodes: int, nproc_per_node: int, layout: dict[str, Any] | None) -> str | None:
    """Why the run cannot resume exactly on `nodes` nodes with the planned `layout` there (None: it can)."""
    if shape.script:
        return "a script run: its own script decides the world sizes it resumes on"
    world = nodes * nproc_per_node
    tp, cp, pp = shape.model_parallel
    micro = shape.micro_batch_size
    if layout is not None:
        new = (int(layout.get("tp", 1)), int(layout.get("cp", 1)), int(layout.get("pp", 1)))
        if new != shape.model_parallel:
            return (
                f"the planned layout there is tp {new[0]} x cp {new[1]} x pp {new[2]}, the run's tp {tp} x cp {cp} "
                f"x pp {pp}"
            )
        if new[2] > 1 and layout.get("train_micro_batch_size"):
            micro = int(layout["train_micro_batch_size"])
    elif shape.dp_shard_fixed is not None:
        return f"its parallel.dp_shard is fixed at {shape.dp_shard_fixed}"
    if world % (tp * cp * pp):
        return f"{world} ranks do not divide into tp {tp} x cp {cp} x pp {pp}"
    dp = world // (tp * cp * pp)
    if shape.global_batch % (dp * micro):
        return (
            f"its global batch of {shape.global_batch} sequences does not split over {dp} data-parallel ranks x "
            f"micro batch {micro}"
        )
    return None


class _Planned:
    """The fleet file's view of each model: node bounds and the planned layout at any node count."""

    def __init__(self, fleet_yaml: Path) -> None:
        from mltrain.cluster.catalog import get_instance
        from mltrain.cluster.fleet import load_fleet
        from mltrain.cluster.planner import read_bench_mfu

        self.fleet = load_fleet(fleet_yaml)
        self.inst = get_instance(self.fleet.cluster.instance_type, self.fleet.instance_types)
        self.by_name = {m.name: m for m in self.fleet.models}
        self._mfu = {
            m.name: m.mfu if m.mfu is not None else read_bench_mfu(m.bench_result or "") for m in self.fleet.models
        }

    def max_nodes(self, name: str, cluster_nodes: int) -> int:
        m, k = self.by_name.get(name), self.fleet.constraints
        bounds = [cluster_nodes, k.max_nodes_per_model] + ([m.max_nodes] if m is not None else [])
        return min(b for b in bounds if b is not None)

    @property
    def granularity(self) -> int:
        return self.fleet.constraints.node_granularity

    def layout(self, name: str, nodes: int) -> dict[str, Any] | None:
        from mltrain.cluster.planner import plan_layout

        m = self.by_name.get(name)
        if m is None:
            return None
        lay = plan_layout(m, self.inst, nodes, self._mfu[name])
        return None if lay is None else lay.to_dict()

    def run_config(self, name: str) -> str | None:
        m = self.by_name.get(name)
        return None if m is None else m.run_config


def _status(run_dir: Path) -> Any:
    from mltrain.launch.status import run_status

    return run_status(run_dir)


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))


def _span(s: float) -> str:
    from mltrain.runstats import fmt_duration

    return fmt_duration(abs(s))


def propose(
    fleet_yaml: Path,
    cluster_yaml: Path,
    now: float | None = None,
    status_of: Callable[[Path], Any] = _status,
) -> tuple[Proposal, FleetState]:
    """The moves `fleet rebalance` would make now (nothing is changed); ClusterError without a fleet record."""
    from mltrain.cluster.spec import load_cluster_spec
    from mltrain.launch.slurm import nproc_per_node

    now = time.time() if now is None else now
    planned = _Planned(fleet_yaml)
    spec = load_cluster_spec(cluster_yaml)
    if spec.instance_type != planned.fleet.cluster.instance_type:
        raise ClusterError(
            f"{cluster_yaml}: instance_type {spec.instance_type} differs from the fleet's "
            f"{planned.fleet.cluster.instance_type} ({fleet_yaml})"
        )
    path = fleet_state_path(spec.run_base_dir, fleet_yaml)
    state = read_fleet_state(path)
    if state is None:
        raise ClusterError(
            f"{path}: no fleet record: `mltrain fleet submit {fleet_yaml} --cluster {cluster_yaml}` writes it"
        )
    nproc = nproc_per_node(spec)
    g = planned.granularity
    moves: list[ModelMove] = []
    notes: list[str] = []
    for name, rec in state.models.items():
        st = status_of(Path(rec.run_dir))
        mv = ModelMove(
            name=name,
            run_dir=rec.run_dir,
            state=st.state,
            step=st.step,
            total_steps=st.total_steps,
            old_nodes=rec.nodes,
            new_nodes=rec.nodes,
            old_finish=None,
            new_finish=None,
            planned_finish=rec.planned_finish,
            remaining_node_s=None,
            why="",
            run_config=planned.run_config(name),
        )
        if st.state == "done":
            mv.new_nodes = 0
            mv.why = f"done: its {rec.nodes} node(s) are free"
        elif not st.running:
            mv.why = f"{st.state}: not moved (only a running model with a measured step time is)"
        elif st.eta_s is None:
            mv.why = "running, no step time measured yet: not moved"
        else:
            mv.remaining_node_s = st.eta_s * rec.nodes
            mv.old_finish = mv.new_finish = now + st.eta_s
        moves.append(mv)
    for name in planned.by_name:
        if name not in state.models:
            notes.append(f"{name}: in the fleet file but not in the record (not submitted): not counted")
    used = sum(m.old_nodes for m in moves if m.state != "done")
    free = max(0, spec.nodes - used)

    # the greedy: grow the model behind its date that finishes last, else the one finishing last
    cands = [m for m in moves if m.remaining_node_s is not None]
    shapes = {m.name: _resume_shape(Path(m.run_dir), m.old_nodes * nproc) for m in cands}
    skipped: dict[str, dict[int, str]] = {m.name: {} for m in cands}

    def next_count(m: ModelMove, budget: int) -> int | None:
        top = planned.max_nodes(m.name, spec.nodes)
        n = (m.new_nodes // g + 1) * g
        while n <= min(top, m.new_nodes + budget):
            why = resume_refusal(shapes[m.name], n, nproc, planned.layout(m.name, n))
            if why is None:
                return n
            skipped[m.name][n] = why
            n += g
        return None

    def finish(m: ModelMove) -> float:
        assert m.remaining_node_s is not None
        return now + m.remaining_node_s / m.new_nodes

    left = free
    active = list(cands)
    while left > 0 and active:
        active.sort(key=lambda m: (finish(m) > m.planned_finish, finish(m)), reverse=True)
        m = active[0]
        n = next_count(m, left)
        if n is None:
            active.remove(m)
            continue
        left -= n - m.new_nodes
        m.new_nodes = n
    for m in cands:
        m.new_finish = finish(m)
        late = (m.old_finish or now) - m.planned_finish
        words = f"behind its date by {_span(late)}" if late > 0 else f"ahead of its date by {_span(late)}"
        top = planned.max_nodes(m.name, spec.nodes)
        if m.gains:
            m.why = f"{words}; +{m.new_nodes - m.old_nodes} free node(s)"
            m.overrides = _overrides(m.run_config, planned.layout(m.name, m.new_nodes))
        elif free == 0:
            m.why = f"{words}; no free node"
        elif m.old_nodes >= top:
            m.why = f"{words}; at its max of {top} nodes"
        else:
            m.why = f"{words}; the free nodes went to {', '.join(x.name for x in cands if x.gains) or 'none'}"
        m.skipped = [f"{n} nodes: {why}" for n, why in sorted(skipped[m.name].items()) if n > m.new_nodes]
        if not m.gains and m.skipped:
            m.why = f"{words}; no node count it can resume on fits the free nodes"
    prop = Proposal(
        fleet=str(Path(fleet_yaml).resolve()),
        cluster=str(Path(cluster_yaml).resolve()),
        record=str(path),
        time=now,
        cluster_nodes=spec.nodes,
        free_nodes=free,
        left_free=left,
        models=moves,
        notes=notes,
    )
    return prop, state


def _overrides(run_config: str | None, layout: dict[str, Any] | None) -> list[str]:
    from mltrain.launch.fleet import planned_overrides

    return [] if run_config is None else planned_overrides(Path(run_config), layout)


def show_proposal(prop: Proposal, console: Console) -> None:
    """The proposal as a table (old -> new nodes, estimated finishes, why), then the skipped counts."""
    from mltrain.tables import Column, fit_table

    cols = [
        Column("model", "left"),
        Column("state", "left", 2),
        Column("step", "right", 3),
        Column("nodes", "left"),
        Column("finish now", "left", 1),
        Column("finish after", "left"),
        Column("planned", "left", 1),
        Column("why", "left", 4),
    ]
    rows = []
    for m in prop.models:
        nodes = f"{m.old_nodes} -> {m.new_nodes}" if m.new_nodes != m.old_nodes else str(m.old_nodes)
        step = "-" if m.step is None else f"{m.step}/{m.total_steps or '?'}"
        rows.append(
            [m.name, m.state, step, nodes, _when(m.old_finish), _when(m.new_finish), _when(m.planned_finish), m.why]
        )
    table, dropped = fit_table(cols, rows, console.width)
    console.print(
        f"fleet record {prop.record}: {prop.cluster_nodes} cluster nodes, {prop.free_nodes} free "
        f"(finished models' and unassigned)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(table)
    if dropped:
        console.print(f"[dim](narrow terminal: {', '.join(dropped)} not shown; --json has every figure)[/]")
    for m in prop.models:
        for s in m.skipped:
            console.print(f"  {m.name}: skipped {s}", highlight=False, soft_wrap=True)
    for n in prop.notes:
        console.print(f"  note: {n}", highlight=False, soft_wrap=True)
    if not prop.moves:
        console.print("nothing to move", highlight=False)
    else:
        console.print(
            f"times UTC; finish = now + remaining steps x measured step time x nodes / new nodes (the restart's "
            f"own minutes not counted); {prop.left_free} node(s) stay free",
            highlight=False,
            soft_wrap=True,
        )


# --------------------------------------------------------------------------- --apply


class Scheduler(Protocol):
    """What --apply needs from Slurm (a fake in the unit tests)."""

    def state(self, job_id: str) -> str | None: ...

    def submit(self, run_yaml: Path, cluster_yaml: Path, overrides: list[str], nodes: int, console: Console) -> str: ...


class SlurmScheduler:
    """The real one: mltrain.launch.slurm's query_job and submit_run."""

    def state(self, job_id: str) -> str | None:
        from mltrain.launch.slurm import query_job

        info = query_job(job_id)
        return None if info is None else info["state"]

    def submit(self, run_yaml: Path, cluster_yaml: Path, overrides: list[str], nodes: int, console: Console) -> str:
        from mltrain.launch.slurm import submit_run

        job = submit_run(run_yaml, cluster_yaml, overrides=overrides, nodes=nodes, time=None, console=console)
        if job is None:
            raise LaunchError(f"{run_yaml}: sbatch gave no job id")
        return job


def _exit_after(run_dir: Path, t: float) -> dict[str, Any] | None:
    """The trainer's last exit record written after `t` (None when none)."""
    from mltrain.fsutil import read_jsonl

    exits = [
        r
        for r in read_jsonl(run_dir / rundir.METRICS_FILE)
        if r.get("kind") == "exit" and isinstance(r.get("time"), (int, float)) and r["time"] >= t - 1.0
    ]
    return exits[-1] if exits else None


def _withdraw(run_dir: Path) -> None:
    """Take back a stop that did not land: the run goes on (and is requeued as before) on its nodes."""
    from mltrain.launch.slurm import CANCELLED_FILE

    (run_dir / rundir.STOP_FILE).unlink(missing_ok=True)
    (run_dir / CANCELLED_FILE).unlink(missing_ok=True)


def move_one(
    m: ModelMove,
    cluster_yaml: Path,
    scheduler: Scheduler,
    console: Console,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    poll_s: float = POLL_S,
) -> tuple[str, int] | None:
    """Stop one run at a checkpoint and resubmit it on m.new_nodes; (job id, checkpoint step), or None after
    saying in one line why it was not moved (then nothing of the fleet record changes)."""
    from mltrain.fsutil import atomic_write
    from mltrain.launch.slurm import ACTIVE_STATES, CANCELLED_FILE, SlurmUnreachable, latest_job_id
    from mltrain.train.faults import write_stop_request

    run_dir = Path(m.run_dir)
    say = lambda msg: console.print(f"{m.name}: {msg}", highlight=False, markup=False, soft_wrap=True)  # noqa: E731
    if m.run_config is None:
        say("no run_config in the fleet file to resubmit from: not moved")
        return None
    job = latest_job_id(run_dir)
    try:
        state = None if job is None else scheduler.state(job)
    except SlurmUnreachable as e:
        say(f"{e}: not moved")
        return None
    if job is None or state != "RUNNING":
        say(f"job {job or '(none)'} is {state or 'unknown to Slurm'}, not RUNNING: not moved")
        return None
    t0 = time.time()
    # the marker `mltrain cancel` writes: the batch script exits instead of requeueing the stopped job
    (run_dir / rundir.CONTROL_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / CANCELLED_FILE, f"{job}\n")
    write_stop_request(run_dir, STOP_WHY)
    say(f"stop requested for job {job} (checkpoint at the next step boundary); waiting for it to leave the queue")
    deadline = time.monotonic() + stop_timeout_s
    while True:
        try:
            state = scheduler.state(job)
        except SlurmUnreachable:
            state = "unknown (Slurm not answering)"  # not known to be gone: wait on, up to the deadline
        else:
            if state is None or state not in ACTIVE_STATES:
                break
        if time.monotonic() >= deadline:
            _withdraw(run_dir)
            say(
                f"job {job} still {state} {stop_timeout_s:.0f} s after the stop request: stop withdrawn, not moved "
                "(fleet record unchanged)"
            )
            return None
        time.sleep(poll_s)
    # the job is gone: a stop file it did not consume would stop the run's next start at once
    (run_dir / rundir.STOP_FILE).unlink(missing_ok=True)
    ex = _exit_after(run_dir, t0)
    ckpts = rundir.committed_checkpoints(run_dir)
    newest = ckpts[-1][0] if ckpts else None
    if ex is not None and ex.get("reason") == "done":
        (run_dir / CANCELLED_FILE).unlink(missing_ok=True)
        say(f"finished (step {ex.get('step')}) before the stop: nothing to resubmit (fleet record unchanged)")
        return None
    if ex is None or ex.get("reason") != "preempted" or not isinstance(ex.get("step"), int):
        what = "no exit record" if ex is None else f"exit reason {ex.get('reason')} at step {ex.get('step')}"
        say(
            f"job {job} ended ({state or 'gone'}) with {what}, not the stop's checkpoint: not resubmitted on "
            f"{m.new_nodes} nodes (fleet record unchanged; newest checkpoint step {newest}; "
            f"`mltrain submit {m.run_config}` resumes it there)"
        )
        return None
    if newest != ex["step"]:
        say(
            f"stopped at step {ex['step']} but the newest committed checkpoint is step {newest}: not resubmitted on "
            f"{m.new_nodes} nodes (fleet record unchanged; `mltrain submit {m.run_config}` resumes it there)"
        )
        return None
    try:
        new_job = scheduler.submit(Path(m.run_config), cluster_yaml, m.overrides, m.new_nodes, console)
    except MltrainError as e:
        say(f"stopped at step {newest} (checkpointed) but the resubmit failed: {e} (fleet record unchanged)")
        return None
    say(f"moved {m.old_nodes} -> {m.new_nodes} nodes at step {newest}: job {new_job}")
    return new_job, newest


def apply_proposal(
    prop: Proposal,
    state: FleetState,
    cluster_yaml: Path,
    console: Console,
    scheduler: Scheduler | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    poll_s: float = POLL_S,
) -> list[str]:
    """Move each model that gains nodes; the record is rewritten after each successful move. Returns the
    names of the models that could not be moved."""
    scheduler = scheduler or SlurmScheduler()
    failed = []
    donors = [m.name for m in prop.models if m.state == "done"]
    path = Path(prop.record)
    for m in prop.moves:
        done = move_one(m, cluster_yaml, scheduler, console, stop_timeout_s, poll_s)
        if done is None:
            failed.append(m.name)
            continue
        job, step = done
        rec = state.models[m.name]
        rec.nodes = m.new_nodes
        if m.new_finish is not None:
            rec.planned_finish = m.new_finish
        rec.job_ids.append(job)
        state.events.append(
            {
                "time": time.time(),
                "model": m.name,
                "from": m.old_nodes,
                "to": m.new_nodes,
                "nodes": m.new_nodes - m.old_nodes,
                "freed_by": donors,
                "checkpoint_step": step,
                "job_id": job,
            }
        )
        write_fleet_state(path, state)
    return failed


def rebalance_command(
    fleet_yaml: Path,
    cluster: Path,
    apply: bool = False,
    json_out: bool = False,
    console: Console | None = None,
    scheduler: Scheduler | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    poll_s: float = POLL_S,
    now: float | None = None,
) -> Proposal:
    """`mltrain fleet rebalance`: print the proposal; with apply, carry it out (LaunchError when a move failed).
    `now` fixes the clock of the proposal (tests)."""
    console = console or Console()
    if not apply:
        return _propose_and_apply(fleet_yaml, cluster, False, json_out, console, scheduler, stop_timeout_s, poll_s, now)
    from mltrain.cluster.spec import load_cluster_spec

    record = fleet_state_path(load_cluster_spec(cluster).run_base_dir, fleet_yaml)
    if not record.exists():  # propose says there is no record, in one line; no lock file left behind
        return _propose_and_apply(fleet_yaml, cluster, True, json_out, console, scheduler, stop_timeout_s, poll_s, now)
    with _apply_lock(record):  # a second --apply waits for nothing: it is refused, and re-reads the record later
        return _propose_and_apply(fleet_yaml, cluster, True, json_out, console, scheduler, stop_timeout_s, poll_s, now)


@contextlib.contextmanager
def _apply_lock(record: Path) -> Iterator[None]:
    """An exclusive lock beside the fleet record for one `--apply`: two at once would both stop and resubmit
    the same run. Refused in one line while another holds it; the kernel drops it if the holder dies."""
    lock_path = record.with_name(record.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise LaunchError(f"{lock_path}: cannot open the rebalance lock: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise LaunchError(
                f"another `mltrain fleet rebalance --apply` is moving this fleet's nodes ({holder}, lock {lock_path}); "
                "run it again when that one is done"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _propose_and_apply(
    fleet_yaml: Path,
    cluster: Path,
    apply: bool,
    json_out: bool,
    console: Console,
    scheduler: Scheduler | None,
    stop_timeout_s: float,
    poll_s: float,
    now: float | None,
) -> Proposal:
    prop, state = propose(Path(fleet_yaml), Path(cluster), now=now)
    if json_out:
        console.print(json.dumps(prop.to_dict(), indent=2), markup=False, highlight=False, soft_wrap=True)
    else:
        show_proposal(prop, console)
    if not apply or not prop.moves:
        return prop
    out = Console(stderr=True) if json_out else console  # --json keeps stdout one JSON document
    failed = apply_proposal(prop, state, Path(cluster), out, scheduler, stop_timeout_s, poll_s)
    if failed:
        raise LaunchError(
            f"not moved: {', '.join(failed)} (see the lines above); the fleet record keeps them as they were"
        )
    out.print(f"fleet record updated: {prop.record}", highlight=False, soft_wrap=True)
    return prop
