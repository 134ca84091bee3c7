"""Which checkpoint directories are complete: the one rule every reader of a run's checkpoints uses.

- mltrain's trainer writes `checkpoints/step_NNNNNNNN/` and writes the `COMMITTED` marker last, listing
  every file with its size and checksum: a step dir without the marker was cut short. The marker's
  presence is the light look (status, the launchers' records); train/checkpoint.py also verifies the
  files against it before it resumes or exports.
- a user's own script (`script:` runs) saves `checkpoint-N` (HF Trainer), `step_N` or `global_stepN`
  dirs; `is_complete_checkpoint` says which of those it could resume from.

Standard library only, no mltrain imports, Python 3.7 syntax: the Slurm batch script runs this file
with the host's python3 (`mltrain submit` copies it beside the script, with launch/batch_helper.py),
where mltrain may not be installed (with a container, only the image has it).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
MARKER = "COMMITTED"  # written last into checkpoints/step_NNNNNNNN/: the checkpoint is complete
STEP_DIR_RE = re.compile(r"^step_(\d{8})$")
SCRIPT_MARKER = "MLTRAIN_COMPLETE"  # written into a script's checkpoint dir once it is whole (hf_trainer)
TRAINER_STATE = "trainer_state.json"
# checkpoint.storage on S3: rank 0 records each commit here too, so the readers that look only at the run dir
# (the batch script's "a new checkpoint since the last requeue?", status) see the run's progress
REMOTE_COMMIT = "control/remote_checkpoint.json"
_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SCRIPT_CKPT_NAME = re.compile(r"^(?:checkpoint-|step_|global_step)(\d+)$")


# --------------------------------------------------------------------------- mltrain's own checkpoints


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def step_dirs(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, dir) of every `checkpoints/step_NNNNNNNN` directory of a run, committed or not, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    out = []
    for p in entries:
        m = STEP_DIR_RE.match(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)), p))
    return sorted(out)


def committed_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, dir) of the checkpoints that carry their commit marker, oldest first (a look at the names only)."""
    return [(s, p) for s, p in step_dirs(run_dir) if (p / MARKER).is_file()]


def remote_commit(run_dir: str | os.PathLike[str]) -> tuple[int, float] | None:
    """(step, unix time) of the newest checkpoint committed to `checkpoint.storage` on S3, from the run dir's
    record of it; None when the run keeps its checkpoints locally (or has none yet)."""
    try:
        rec = json.loads((Path(run_dir) / REMOTE_COMMIT).read_text())
        return int(rec["step"]), float(rec["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def latest_committed_step(run_dir: str | os.PathLike[str]) -> int | None:
    """The newest committed step of a run (the step its next start resumes from), None before the first:
    under <run>/checkpoints, or on S3 (checkpoint.storage) as the run dir records it."""
    committed = committed_checkpoints(run_dir)
    remote = remote_commit(run_dir)
    steps = ([committed[-1][0]] if committed else []) + ([remote[0]] if remote else [])
    return max(steps) if steps else None


def read_marker(ckpt: Path) -> tuple[dict | None, str | None]:
    """(the marker's {file: {size, hash}} entries, None), or (None, why the checkpoint is not committed)."""
    marker = ckpt / MARKER
    if not marker.is_file():
        return None, "no COMMITTED marker (the save did not finish)"
    try:
        files = json.loads(marker.read_text())["files"]
        if not isinstance(files, dict):
            raise ValueError("'files' is not a mapping")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"unreadable COMMITTED marker ({e})"
    return files, None


# --------------------------------------------------------------------------- a user's script's checkpoints


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint directory named checkpoint-N (HF Trainer), step_N or global_stepN."""
    m = _SCRIPT_CKPT_NAME.match(path.name)
    return int(m.group(1)) if m else None


def is_complete_checkpoint(path: Path) -> bool:
    """A checkpoint is complete when the script could resume from it.

    - our marker MLTRAIN_COMPLETE (the HF callback writes it last, after the Trainer saved), or mltrain's
      own COMMITTED marker, is proof;
    - otherwise (a checkpoint saved without the callback) an HF Trainer checkpoint is complete when
      trainer_state.json parses with the dir's step (the Trainer writes it after the weights, optimizer and
      RNG states) and weights are present (safetensors/bin, a complete sharded index, or DeepSpeed's
      global_stepN/ directory).
    """
    if not path.is_dir():
        return False
    if (path / SCRIPT_MARKER).is_file() or (path / MARKER).is_file():
        return True
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    step = checkpoint_step(path)
    if step is not None and isinstance(state, dict) and state.get("global_step") not in (None, step):
        return False
    if any((path / w).is_file() for w in _WEIGHTS):
        return True
    for index in _WEIGHT_INDEXES:
        try:
            shards = set(json.loads((path / index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        return all((path / s).is_file() for s in shards)
    return any(p.is_dir() and p.name.startswith("global_step") for p in path.iterdir())


def latest_checkpoint(directory: str | os.PathLike[str]) -> str | None:
    """The newest complete checkpoint under `directory`, as a path string for `resume_from_checkpoint=`;
    None when there is none. Incomplete ones (killed mid-save) are skipped."""
    d = Path(directory)
    try:
        entries = [(checkpoint_step(p), p) for p in d.iterdir()]
    except OSError:
        return None
    for _, p in sorted(((s, p) for s, p in entries if s is not None), reverse=True):
        if is_complete_checkpoint(p):
            return str(p)
    return None
