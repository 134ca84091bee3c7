"""Helpers shared by the end-to-end tests: a tiny run config and how to call the CLI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml


def tiny_run_config(base: Path, data_dir: Path, name: str = "t", **train) -> dict:
    """A model small enough that a 2-process step takes milliseconds on CPU."""
    cfg = {
        "name": name,
        "base_dir": str(base),
        "seed": 7,
        "model": {
            "preset": "tiny",
            "vocab_size": 1024,
            "hidden_size": 64,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "ffn_hidden_size": 128,
        },
        "data": {"dir": str(data_dir)},
        "train": {
            "seq_len": 32,
            "micro_batch_size": 4,
            "max_steps": 8,
            "lr": 3e-3,
            "warmup_steps": min(2, train.get("max_steps", 8)),  # warmup > max_steps is refused
            "eval_every": 0,
            "eval_batches": 2,
            "log_every": 1,
            "tensorboard": False,
            **train,
        },
        "checkpoint": {"every_steps": 3, "keep_last": 2},
    }
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def mltrain_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mltrain", *args]


def wait_gone(pid: int, timeout_s: float) -> bool:
    """True once process `pid` no longer exists (within timeout_s)."""
    import os
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def run_bench_smoke(script: str, out: Path) -> dict:
    """`python bench/<script> --smoke --out OUT` on one thread; the result JSON (the run must succeed)."""
    import json
    import os
    import subprocess

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, str(root / "bench" / script), "--smoke", "--out", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(out.read_text())


def mltrain_status(run_dir: Path, *args: str) -> str:
    """`mltrain status RUN_DIR [ARGS]` in a 160-column terminal; its stdout (the command must succeed)."""
    import os
    import subprocess

    st = subprocess.run(
        mltrain_cmd("status", str(run_dir), *args),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert st.returncode == 0, st.stderr
    return st.stdout


def write_jsonl(path: Path, recs: list[dict]) -> None:
    """Records as a JSON-lines file (a run dir's metrics.jsonl, restarts.jsonl, ...), parents made."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def fake_slurm_bin(tmp_path: Path, monkeypatch: Any, squeue: str = "", scontrol: str | None = None) -> Path:
    """Stand-in squeue/scontrol/sacct on PATH for status tests that need no real cluster: squeue prints
    `squeue` (state|reason|nodes), scontrol prints `scontrol` (key=value) or fails as for an unknown job."""
    fb = tmp_path / "fakebin"
    fb.mkdir(exist_ok=True)
    bodies = {
        "squeue": f"echo -n '{squeue}'; exit 0",
        "scontrol": f"echo '{scontrol}'; exit 0" if scontrol else "echo 'Invalid job id' >&2; exit 1",
        "sacct": "exit 1",
    }
    for name, body in bodies.items():
        (fb / name).write_text(f"#!/bin/bash\n{body}\n")
        (fb / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fb}:/usr/bin:/bin")
    return fb


def committed_checkpoint(ck: Path, files: list[str]) -> Path:
    """A checkpoint dir holding `files` (distinct bytes each) and the COMMITTED marker with their digests."""
    import json

    from mltrain.train.checkpoint import MARKER, hash_files

    ck.mkdir(parents=True)
    for i, rel in enumerate(files):
        (ck / rel).write_bytes(bytes([i]) * (100 + i))
    (ck / MARKER).write_text(json.dumps({"files": hash_files(ck, files), "step": 1}))
    return ck


def flip_last_byte(p: Path) -> None:
    """Damage a file without changing its size (what only a digest catches)."""
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 0x01
    p.write_bytes(bytes(raw))


def strict_schema(schema: Any) -> Any:
    """A CRD's openAPIV3Schema with unknown fields made errors: the API server prunes them silently, a test
    should see them."""
    if isinstance(schema, dict):
        out = {k: strict_schema(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict_schema(v) for v in schema]
    return schema
