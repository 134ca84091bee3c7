"""Launch the user's own training script (`script:` in the run config) under torchrun, and say why it ended.

Pieces, shared by `mltrain train RUN.yaml --nproc N` (here) and the Slurm batch script (launch/slurm.py):
- `script_env`     the environment every rank gets: the run dir, the checkpoint dir, the resume point;
- `worker_args`    what follows `torchrun <rendezvous flags>`: `-m mltrain.launch.script /abs/train.py ARGS`;
                   that wrapper runs the script as __main__ and records each rank's exit code under
                   control/ranks/ and the run's exit reason (done / preempted / config_error / failed) in
                   control/exit_reason, because torchrun collapses every worker failure into exit code 1;
- `outcome`        the launcher's verdict from those records: done, stopped for requeue (75), config error
                   (exit 2: never requeued), rank failure (a rank killed by a signal or crashed).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from mltrain import exit_codes, rundir
from mltrain.config import RunConfig, ScriptConfig
from mltrain.errors import ConfigError, MltrainError
from mltrain.fsutil import atomic_write

ENV_RESUME_ARG = "MLTRAIN_RESUME_ARG"  # script.resume_arg: the wrapper appends it + the newest complete checkpoint
RANKS_DIR = "control/ranks"  # one <rank>.json per worker that ended on its own: {"rank", "code", "error"}
WORKER_MODULE = "mltrain.launch.script"
# Which exit reason wins when ranks disagree (a config error on one rank explains the others' failures).
_PRECEDENCE = {
    exit_codes.REASON_DONE: 0,
    exit_codes.REASON_PREEMPTED: 1,
    exit_codes.REASON_FAILED: 2,
    exit_codes.REASON_CONFIG_ERROR: 3,
}


# --------------------------------------------------------------------------- building the command


def resolve_script(cfg: RunConfig, run_yaml: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(absolute script path, working directory): both relative to the run config file's directory."""
    sc = _script(cfg)
    workdir = Path(run_yaml).resolve().parent
    path = (workdir / sc.path).resolve()
    if not path.is_file():
        raise ConfigError(f"{run_yaml}: script.path: {path} is not a file")
    return path, workdir


def _script(cfg: RunConfig) -> ScriptConfig:
    if cfg.script is None:
        raise ConfigError(f"run {cfg.name}: not a script run (no script: section)")
    return cfg.script


def checkpoint_dir(cfg: RunConfig, run_dir: Path) -> Path:
    return run_dir / _script(cfg).checkpoint_dir


def script_env(cfg: RunConfig, run_dir: Path) -> dict[str, str]:
    """Environment for every rank (mltrain.runtime and the wrapper read it). Static for the whole run, so
    the Slurm batch script can export it once at render time: the resume point is found by the wrapper
    at each start (MLTRAIN_RESUME_FROM, and `resume_arg PATH` appended to the script's arguments)."""
    from mltrain import runtime

    run_dir = run_dir.resolve()
    env = {
        runtime.ENV_RUN_DIR: str(run_dir),
        runtime.ENV_RUN_NAME: cfg.name,
        runtime.ENV_CHECKPOINT_DIR: str(checkpoint_dir(cfg, run_dir)),
        "PYTHONUNBUFFERED": "1",  # rank output reaches the log line by line
    }
    if _script(cfg).resume_arg:
        env[ENV_RESUME_ARG] = str(_script(cfg).resume_arg)
    return env


def worker_args(cfg: RunConfig, script_path: Path) -> list[str]:
    """Everything after `torchrun <flags>`: the wrapper module, the script and its arguments."""
    return ["-m", WORKER_MODULE, str(script_path), *_script(cfg).args]


def local_command(cfg: RunConfig, script_path: Path, nproc: int) -> list[str]:
    """torchrun on this machine: `python -m mltrain.launch.torchrun --standalone --nproc-per-node N ...`."""
    from mltrain.launch.local import standalone_torchrun

    return [*standalone_torchrun(nproc), *worker_args(cfg, script_path)]


def slurm_context(cfg: RunConfig, run_yaml: str | os.PathLike[str], run_dir: Path) -> dict[str, Any]:
    """What the sbatch template needs for a script run (follow-up of the Slurm launcher): per node,
    `cd {{ workdir }}`, export {{ env }}, then `torchrun <nodes/rendezvous flags> {{ worker_args_shell }}`."""
    import shlex

    script_path, workdir = resolve_script(cfg, run_yaml)
    args = worker_args(cfg, script_path)
    return {
        "workdir": str(workdir),
        "env": script_env(cfg, run_dir),
        "worker_args": args,
        "worker_args_shell": shlex.join(args),
    }


def script_config_yaml(cfg: RunConfig) -> str:
    """config.yaml for a script run: only the sections that mean something for it (config.dump_yaml)."""
    from mltrain.config import dump_yaml

    return dump_yaml(cfg)


def prepare_run_dir(cfg: RunConfig, run_dir: Path) -> None:
    """Create the run dir, write config.yaml, and clear the previous start's verdict files. A stop file
    left from before this start is stale: removed, and said so."""
    (run_dir / rundir.CONTROL_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / rundir.CONFIG_FILE, script_config_yaml(cfg))
    for name in (rundir.EXIT_REASON_FILE, rundir.EXIT_MESSAGE_FILE):
        (run_dir / name).unlink(missing_ok=True)
    ranks = run_dir / RANKS_DIR
    if ranks.is_dir():
        for p in ranks.glob("*.json"):
            p.unlink(missing_ok=True)
    stop = run_dir / rundir.STOP_FILE
    if stop.exists():
        stop.unlink(missing_ok=True)
        print(f"[mltrain] removed a stale stop request ({stop}) left from before this start", flush=True)


# --------------------------------------------------------------------------- the verdict


@dataclass
class Outcome:
    """Why a script run ended: the launcher's exit code, the exit reason word and one line for people."""

    exit_code: int
    reason: str
    message: str


def read_rank_records(run_dir: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    d = run_dir / RANKS_DIR
    if not d.is_dir():
        return out
    for p in d.glob("*.json"):
        try:
            rec = json.loads(p.read_text())
            out[int(rec["rank"])] = rec
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def outcome(run_dir: Path, returncode: int, world_size: int) -> Outcome:
    """The verdict from torchrun's exit code and the ranks' records (see the module docstring)."""
    recs = read_rank_records(run_dir)
    codes = {r: int(rec.get("code", 1)) for r, rec in recs.items()}
    cfg_err = sorted(r for r, c in codes.items() if c == exit_codes.CONFIG_ERROR)
    if cfg_err:
        r = cfg_err[0]
        err = recs[r].get("error")
        return Outcome(
            exit_codes.CONFIG_ERROR,
            exit_codes.REASON_CONFIG_ERROR,
            f"config error: rank {r} exited {exit_codes.CONFIG_ERROR}{': ' + err if err else ''} "
            "(a config or usage error: the run is not restarted)",
        )
    missing = [r for r in range(world_size) if r not in codes]
    if returncode == 0 and all(c == 0 for c in codes.values()):  # torchrun saw every worker exit 0
        return Outcome(exit_codes.DONE, exit_codes.REASON_DONE, "the script finished")
    bad = sorted(r for r, c in codes.items() if c not in (0, exit_codes.REQUEUE))
    if not missing and not bad and exit_codes.REQUEUE in codes.values():
        return Outcome(
            exit_codes.REQUEUE, exit_codes.REASON_PREEMPTED, "stopped on request after a checkpoint (exit 75)"
        )
    if missing:
        ranks = ", ".join(map(str, missing))
        return Outcome(
            returncode or 1,
            "lost_rank",
            f"rank failure: rank(s) {ranks} ended without an exit code (killed by a signal: SIGKILL, the OOM "
            f"killer, a lost node); torchrun exit {returncode}",
        )
    r = bad[0]
    err = recs[r].get("error")
    return Outcome(
        codes[r] or 1,
        exit_codes.REASON_FAILED,
        f"rank failure: rank {r} exited {codes[r]}{': ' + err if err else ''}",
    )


def record_outcome(run_dir: Path, out: Outcome) -> None:
    """control/exit_reason (+ exit_message for failures), as `status` and the Slurm script read them."""
    (run_dir / rundir.CONTROL_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / rundir.EXIT_REASON_FILE, out.reason + "\n")
    if out.reason not in (exit_codes.REASON_DONE, exit_codes.REASON_PREEMPTED, exit_codes.REASON_INTERRUPTED):
        atomic_write(run_dir / rundir.EXIT_MESSAGE_FILE, out.message.removeprefix("config error: ") + "\n")


# --------------------------------------------------------------------------- local launcher


def run_script_local(cfg: RunConfig, run_yaml: str | os.PathLike[str], nproc: int) -> int:
    """`mltrain train RUN.yaml --nproc N` for a script run. Ctrl-C, SIGUSR1 or SIGTERM to this process become a
    stop request (control/stop, as the Slurm batch script does): a cooperating script checkpoints and exits 75."""
    script_path, workdir = resolve_script(cfg, run_yaml)
    run_dir = cfg.run_dir.resolve()
    held = _take_lease(run_dir)
    try:
        prepare_run_dir(cfg, run_dir)
        return _run_local(cfg, script_path, workdir, run_dir, nproc)
    finally:
        if held is not None:
            held.release()


def _take_lease(run_dir: Path) -> Any:
    """The run dir's lease (mltrain.lease), so two launches cannot share a run dir and
    `mltrain stop RUN` finds the holder; None where the lease module is not there yet."""
    try:
        from mltrain import lease
    except ImportError:
        return None
    return lease.acquire_lease(run_dir, job_id=os.environ.get("SLURM_JOB_ID"))


def _run_local(cfg: RunConfig, script_path: Path, workdir: Path, run_dir: Path, nproc: int) -> int:
    """torchrun under launch.local.supervise: output teed into <run>/logs/local-*.log; Ctrl-C, SIGTERM or
    SIGUSR1 become a stop request (a cooperating script checkpoints and exits 75), a second Ctrl-C kills
    the ranks (exit 130, reason `interrupted`)."""
    from mltrain import runtime
    from mltrain.launch.local import ABORTED_LINE, run_log, supervise

    env = dict(os.environ)
    for stale in ("MLTRAIN_RESUME_FROM", ENV_RESUME_ARG):  # inherited from a parent run
        env.pop(stale, None)
    env.update(script_env(cfg, run_dir))
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    resume = runtime.latest_checkpoint(checkpoint_dir(cfg, run_dir))
    with run_log(run_dir) as tee:
        print(
            f"[mltrain] run {cfg.name}: {nproc} x {script_path.name} under torchrun, run dir {run_dir}"
            + (f", newest checkpoint {resume}" if resume else ""),
            flush=True,
        )
        rc, aborted = supervise(local_command(cfg, script_path, nproc), env, run_dir, tee, cwd=workdir)
        if aborted:
            out = Outcome(exit_codes.INTERRUPTED, exit_codes.REASON_INTERRUPTED, ABORTED_LINE)
        else:
            out = outcome(run_dir, rc, nproc)
        record_outcome(run_dir, out)
        if out.reason == exit_codes.REASON_PREEMPTED:
            (run_dir / rundir.STOP_FILE).unlink(missing_ok=True)  # consumed
        print(
            f"[mltrain] {out.message}; exit {out.exit_code}",
            file=sys.stderr if out.exit_code else sys.stdout,
            flush=True,
        )
    return out.exit_code


# --------------------------------------------------------------------------- the per-rank wrapper


def _code_of(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # sys.exit("message") prints and exits 1
    return 1


def _record_rank(code: int, error: str | None) -> bool:
    """This rank's exit code, and the run's exit reason if it outranks the one already written.
    False when there is no run dir to record into (the script was run outside mltrain)."""
    from mltrain import runtime

    d = os.environ.get(runtime.ENV_RUN_DIR)
    if not d:
        return False
    run_dir = Path(d)
    rank = int(os.environ.get("RANK", "0") or 0)
    (run_dir / RANKS_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / RANKS_DIR / f"{rank}.json", json.dumps({"rank": rank, "code": code, "error": error}) + "\n")
    reason = {
        exit_codes.DONE: exit_codes.REASON_DONE,
        exit_codes.REQUEUE: exit_codes.REASON_PREEMPTED,
        exit_codes.CONFIG_ERROR: exit_codes.REASON_CONFIG_ERROR,
    }.get(code, exit_codes.REASON_FAILED)
    if reason == exit_codes.REASON_DONE and rank != 0:
        return True
    current = rundir.read_exit_reason(run_dir)
    if current is None or _PRECEDENCE.get(reason, 0) > _PRECEDENCE.get(current, 0):
        atomic_write(run_dir / rundir.EXIT_REASON_FILE, reason + "\n")
        if error and reason in (exit_codes.REASON_CONFIG_ERROR, exit_codes.REASON_FAILED):
            atomic_write(run_dir / rundir.EXIT_MESSAGE_FILE, f"rank {rank}: {error}\n")
    return True


def worker_main(argv: list[str]) -> NoReturn:
    """Run `argv[0]` as __main__ with `argv[1:]` as its arguments (as `python train.py ARGS` would), then
    record how it ended. Leaves with os._exit after the atexit handlers: interpreter teardown of
    gloo/NCCL objects can hang (see train/trainer.py _KEEPALIVE)."""
    if not argv:
        print(f"usage: python -m {WORKER_MODULE} SCRIPT [ARGS...]", file=sys.stderr)
        os._exit(exit_codes.CONFIG_ERROR)
    from mltrain import runtime, startup

    startup.begin_for_a_script()  # the GC waits while the script imports torch / transformers
    path = str(Path(argv[0]).resolve())
    sys.argv = [path, *argv[1:]]
    ckpt_dir = os.environ.get(runtime.ENV_CHECKPOINT_DIR)
    resume = runtime.latest_checkpoint(ckpt_dir) if ckpt_dir else None
    if resume:
        os.environ[runtime.ENV_RESUME_FROM] = resume
        if os.environ.get(ENV_RESUME_ARG):
            sys.argv += [os.environ[ENV_RESUME_ARG], resume]
    else:
        os.environ.pop(runtime.ENV_RESUME_FROM, None)
    sys.path[0] = str(Path(path).parent)
    code, error = 0, None
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        code = _code_of(e.code)
    except MltrainError as e:  # a usage error found by mltrain's own code in the script (e.g. the HF callback)
        print(f"error: {e}", file=sys.stderr, flush=True)
        code, error = e.exit_code, str(e).splitlines()[0]
    except BaseException as e:
        traceback.print_exc()
        code, error = 1, f"{type(e).__name__}: {e}".splitlines()[0]
    exit_code = code
    try:
        if _record_rank(code, error) and code == exit_codes.REQUEUE:
            # recorded: torchrun would print a ChildFailedError traceback for a non-zero worker (and collapse
            # the code to 1); the launcher reads 75 from control/ranks/ instead
            exit_code = 0
    except OSError as e:  # the verdict is lost, not the exit code
        print(f"[mltrain] cannot record rank exit: {e}", file=sys.stderr)
    try:
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)


if __name__ == "__main__":
    worker_main(sys.argv[1:])
