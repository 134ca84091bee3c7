"""Before a multi-rank resume every rank hashes its share of the newest checkpoint's files: on real gloo
processes, a file damaged in the share of a rank other than 0 must still make every rank skip it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.helpers import committed_checkpoint, flip_last_byte

pytestmark = pytest.mark.slow

FILES = [".metadata", "__0_0.distcp", "__1_0.distcp", "rank_00000.pt", "rank_00001.pt", "x.json"]


def committed(ck: Path) -> Path:
    return committed_checkpoint(ck, FILES)


WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch.distributed as dist
    from mltrain.train.checkpoint import CheckpointManager

    rank, world, run, init = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    warnings = []
    mgr = CheckpointManager(run, keep_last=3, rank=rank, world_size=world, warn=warnings.append, info=print)
    step, path = mgr.latest()
    print(f"RESULT {rank} {step} {warnings}", flush=True)
    dist.destroy_process_group()
    """
)


def test_two_rank_resume_skips_a_checkpoint_damaged_in_rank_1s_share(tmp_path):
    """2 real gloo processes call `latest()`: the damaged file is in rank 1's share (file k is hashed by
    rank k % 2), and both ranks must agree to skip that checkpoint for the older good one."""
    damaged = 1
    run = tmp_path / "run"
    committed(run / "checkpoints" / "step_00000001")
    newer = committed(run / "checkpoints" / "step_00000002")
    flip_last_byte(newer / sorted(FILES)[damaged])
    init = f"file://{tmp_path / 'pg'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(r), "2", str(run), init],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [next(ln for ln in o[0].splitlines() if ln.startswith("RESULT")) for o in outs]
    assert all(r.split(" ", 3)[2] == "1" for r in results), results
    assert "does not match its xxh3_128 checksum" in results[0] and sorted(FILES)[damaged] in results[0]
