"""Start-up cost of the CLI: wall time of `python -m mltrain --help`, this checkout against another revision.

`mltrain --help` is what a user runs first, so the CLI imports no heavy package (torch, boto3,
transformers, pcluster) until a command needs it. This script times the help of this checkout's src/
and of `--before-rev`'s src/ (extracted with `git archive`), in interleaved pairs so a change in
machine load hits both alike, and reports the median of each. It also records, from
`python -X importtime` (median of as many runs), how long importing `mltrain.cli` takes, how many
modules the help loads, and which heavy packages are among them (there should be none).

    python bench/cli_help.py                      # vs main; writes bench/results/cli-help-<date>.json
    python bench/cli_help.py --before-rev HEAD~3 --runs 20
    python bench/cli_help.py --before-rev ''      # this checkout only
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS_DIR, ROOT, git_commit, today, write_json

HEAVY = ("torch", "numpy", "boto3", "botocore", "transformers", "pcluster", "pyarrow", "kubernetes", "safetensors")


def _help(src: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "100"}
    return subprocess.run(
        [sys.executable, *extra, "-m", "mltrain", "--help"], capture_output=True, text=True, env=env, timeout=120
    )


def time_help(src: Path) -> float:
    """Wall seconds of one `python -m mltrain --help` (interpreter start included)."""
    t0 = time.perf_counter()
    r = _help(src)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"`mltrain --help` failed with {src}:\n{r.stderr}")
    return wall


def import_profile(src: Path, runs: int) -> dict[str, Any]:
    """From `-X importtime` (median of `runs`): cumulative import time of mltrain.cli, modules loaded,
    heavy ones among them."""
    cli_ms, modules = [], []
    for _ in range(runs):
        lines = [ln for ln in _help(src, "-X", "importtime").stderr.splitlines() if ln.startswith("import time:")]
        modules = []
        for ln in lines[1:]:  # the first line is the header
            _, cumulative, name = (part.strip() for part in ln.removeprefix("import time:").split("|"))
            modules.append(name)
            if name == "mltrain.cli":
                cli_ms.append(int(cumulative) / 1000)
    return {
        "mltrain_cli_import_ms": round(statistics.median(cli_ms), 1) if cli_ms else None,
        "modules_loaded": len(modules),
        "heavy_loaded": sorted({m.split(".")[0] for m in modules} & set(HEAVY)),
    }


def extract_src(rev: str, into: Path) -> Path:
    """`rev`'s src/ tree, from `git archive` (no checkout of this worktree is touched)."""
    tar = into / "src.tar"
    with tar.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], stdout=f, check=True)
    with tarfile.open(tar) as t:
        t.extractall(into, filter="data")
    return into / "src"


def summary(samples: list[float]) -> dict[str, Any]:
    return {
        "median_s": round(statistics.median(samples), 4),
        "min_s": round(min(samples), 4),
        "max_s": round(max(samples), 4),
        "samples_s": [round(s, 4) for s in samples],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="timed runs per tree")
    ap.add_argument("--before-rev", default="main", help="git revision to compare with; '' for none")
    ap.add_argument("--note", default="", help="conditions worth recording (e.g. other load on the machine)")
    ap.add_argument("--out", type=Path, default=None, help="default bench/results/cli-help-<date>.json")
    args = ap.parse_args()

    trees = {"after": ROOT / "src"}
    with tempfile.TemporaryDirectory(prefix="mltrain-cli-help-") as tmp:
        if args.before_rev:
            trees = {"before": extract_src(args.before_rev, Path(tmp)), **trees}
        for src in trees.values():
            time_help(src)  # warm-up: writes __pycache__, fills the page cache
        samples: dict[str, list[float]] = {k: [] for k in trees}
        for i in range(args.runs):
            order = list(trees) if i % 2 == 0 else list(reversed(trees))
            for k in order:
                samples[k].append(time_help(trees[k]))
        result: dict[str, Any] = {
            "benchmark": "cli-help",
            "command": "python -m mltrain --help",
            "env": {
                "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "git_commit": git_commit(),
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "loadavg_1m": round(os.getloadavg()[0], 2),
            },
            "runs": args.runs,
            **({"note": args.note} if args.note else {}),
        }
        for k, src in trees.items():
            result[k] = {**summary(samples[k]), **import_profile(src, args.runs)}
        if args.before_rev:
            result["before"]["rev"] = args.before_rev
            result["after_over_before_median"] = round(result["after"]["median_s"] / result["before"]["median_s"], 3)
    out = write_json(args.out or RESULTS_DIR / f"cli-help-{today()}.json", result)
    for k in trees:
        r = result[k]
        print(
            f"{k:>6}: median {r['median_s']:.3f}s (min {r['min_s']:.3f}, max {r['max_s']:.3f}), "
            f"mltrain.cli import {r['mltrain_cli_import_ms']} ms, {r['modules_loaded']} modules, "
            f"heavy: {r['heavy_loaded'] or 'none'}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
