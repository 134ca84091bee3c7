"""`mltrain train` on one machine: run the trainer in this process, or start torchrun for N processes.

Under torchrun (or srun + torchrun on Slurm) each worker re-enters here with RANK/WORLD_SIZE set
and runs the trainer directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from mltrain import exit_codes, rundir
from mltrain.config import check_nproc, load_run_config
from mltrain.errors import MltrainError


def torchrun_command(run_yaml: Path, overrides: list[str], nproc: int) -> list[str]:
    """The exact torchrun invocation for a single-node multi-process run."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mltrain",
        "train",
        str(run_yaml),
    ]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def _fit_to_gpus(nproc: int, device: str) -> int:
    """One process per GPU: on a machine with fewer GPUs than --nproc, use the GPUs there are."""
    if device == "cpu" or nproc <= 1:
        return nproc
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < nproc:
        print(f"[mltrain] --nproc {nproc} but {gpus} GPU(s) here: running {gpus} process(es)", flush=True)
        return gpus
    return nproc


def train_local(run_yaml: Path, overrides: list[str], nproc: int = 1) -> int:
    """Train on this machine. Returns the exit code (exit_codes: 0 done, 75 stopped for requeue)."""
    cfg = load_run_config(run_yaml, overrides)
    check_nproc(cfg, nproc, run_yaml)
    nproc = _fit_to_gpus(nproc, cfg.train.device)
    is_worker = "LOCAL_RANK" in os.environ  # started by torchrun (here or by srun on a cluster)
    if nproc > 1 and not is_worker:
        from mltrain.train.trainer import precheck

        precheck(cfg)  # fail once, with one line, before starting N workers
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
        proc = subprocess.run(torchrun_command(run_yaml, overrides, nproc), env=env)
        reason = rundir.read_exit_reason(cfg.run_dir)
        if reason == exit_codes.REASON_PREEMPTED:
            return exit_codes.REQUEUE
        if reason == exit_codes.REASON_DONE and proc.returncode == 0:
            return exit_codes.DONE
        if reason == exit_codes.REASON_CONFIG_ERROR:
            return exit_codes.CONFIG_ERROR
        return proc.returncode or 1
    from mltrain.train.trainer import run_training

    if not is_worker:
        return run_training(cfg)
    return _exit_worker(lambda: run_training(cfg))


def _exit_worker(train: Callable[[], int]) -> NoReturn:
    """Run a torchrun worker and leave with os._exit: interpreter teardown of DDP/gloo objects can
    deadlock (see trainer._KEEPALIVE), and every file the trainer writes is closed by now."""
    code = 1
    try:
        code = train()
    except MltrainError as e:
        print(f"error: {e}", file=sys.stderr)
        code = e.exit_code
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
