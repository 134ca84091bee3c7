"""The run directory `<base>/runs/<name>/`: its layout, and finding a run by name or path.

Layout (same on a laptop, on FSx Lustre, mirrored to S3):
    config.yaml          resolved run config (written at first start)
    metrics.jsonl        one JSON object per logged step / eval
    tb/                  TensorBoard events
    checkpoints/step_NNNNNNNN/   committed DCP checkpoints (+ .tmp while being written)
    control/stop         a stop request (written by the Slurm batch script on USR1)
    control/exit_reason  one word written by rank 0 when the trainer exits (see exit_codes)
    control/exit_message the one-line error behind a config_error exit (read by `status`)
    restarts.jsonl       one line per restart (time, cause, nodes, step resumed from)
    hangs/               watchdog stack dumps
    slurm/               rendered sbatch script, job records, scheduler logs
    report.png           `mltrain report`
"""

from __future__ import annotations

import os
from pathlib import Path

from mltrain import checkpoint_rule
from mltrain.errors import RunDirError

RUNS_DIR = "runs"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = checkpoint_rule.CHECKPOINTS_DIR
CONTROL_DIR = "control"
STOP_FILE = "control/stop"
EXIT_REASON_FILE = "control/exit_reason"
EXIT_MESSAGE_FILE = "control/exit_message"  # the one-line error behind a config_error exit
RESTARTS_FILE = "restarts.jsonl"
HANGS_DIR = "hangs"
SLURM_DIR = "slurm"
REPORT_FILE = "report.png"
CHECKPOINT_MARKER = checkpoint_rule.MARKER  # written last into checkpoints/step_NNNNNNNN/: the checkpoint is complete
STEP_DIR_RE = checkpoint_rule.STEP_DIR_RE


def default_base(base_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where runs/ lives when a command is given a run name: `base_dir`, else $MLTRAIN_BASE_DIR, else '.'."""
    return Path(base_dir or os.environ.get("MLTRAIN_BASE_DIR", "."))


def run_path(base: str | os.PathLike[str], name: str) -> Path:
    """`<base>/runs/<name>/`: the one place a run directory's path is spelled out."""
    return Path(base) / RUNS_DIR / str(name)


def resolve_run(ref: str | os.PathLike[str], base_dir: str | os.PathLike[str] | None = None) -> Path:
    """A run given as a path (containing config.yaml) or a name under `<base>/runs/`.

    The base is `base_dir`, else $MLTRAIN_BASE_DIR, else the current directory.
    """
    p = Path(ref)
    if (p / CONFIG_FILE).is_file():
        return p
    candidate = run_path(default_base(base_dir), str(ref))
    if (candidate / CONFIG_FILE).is_file():
        return candidate
    raise RunDirError(
        f"run {str(ref)!r} not found: neither {p} nor {candidate} holds a {CONFIG_FILE} "
        "(pass the run directory, or set MLTRAIN_BASE_DIR)"
    )


def read_exit_reason(run_dir: Path) -> str | None:
    try:
        return (run_dir / EXIT_REASON_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def exit_reason_since(run_dir: Path, started: float) -> str | None:
    """The exit reason written at or after `started` (a second's slack for file-system clocks); an older one
    is another start's outcome."""
    try:
        if (run_dir / EXIT_REASON_FILE).stat().st_mtime < started - 1.0:
            return None
    except OSError:
        return None
    return read_exit_reason(run_dir)


def committed_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, dir) of the checkpoints that carry their commit marker, oldest first. A light look at the
    names only (status, metrics, launchers); train/checkpoint.py verifies the contents before a resume."""
    return checkpoint_rule.committed_checkpoints(run_dir)
