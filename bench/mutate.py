"""Mutation tests (mutmut 3) of the modules where a silent bug loses data or money, one module at a time.

Each module runs in its own work dir, mutants/<module>/ (src and tests linked, a pyproject.toml whose
[tool.mutmut] names only that module and only the unit tests that cover it), so a module's results and
mutmut's cache survive the runs of the others. A re-run tests again every mutant that was not
killed (and those of changed functions); --fresh tests them all. Afterwards
`cd mutants/<module> && ../../.venv/bin/mutmut show <mutant>` prints a mutant's diff.

The results of all modules go to bench/results/mutation-<date>.json: per module killed, survived,
timeout, no tests, the survivors judged equivalent (bench/mutation-equivalent.yaml, with the reason)
and the score = (killed + timeout) / (total - equivalent). A timeout is a detection: the mutant made
a test hang (mutmut counts it the same way). An equivalent judgement is applied only while the
mutant's diff is the one it was judged on; a stale one is listed and not counted.

Only in-process tests can kill a mutant: a test that runs mltrain in a subprocess (torchrun, the CLI)
imports the unmutated code. That is why each module is paired with its unit tests.

    python bench/mutate.py                       # all modules
    python bench/mutate.py lease checkpoint      # some
    python bench/mutate.py --max-children 2 --report-only
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "mutants"
EQUIVALENT_FILE = ROOT / "bench" / "mutation-equivalent.yaml"

# module name -> (source file, the in-process unit tests that cover it). A tests/unit/test_<name>_mutants.py
# is added when it exists.
MODULES: dict[str, tuple[str, list[str]]] = {
    # with the S3 store's in-process tests (a moto server in a thread): the protocol's arguments that only the
    # S3 backend reads (prepare's final, prune's, saved_to's, the DCP reader) are seen there, not on disk
    "checkpoint": (
        "src/mltrain/train/checkpoint.py",
        ["tests/unit/test_checkpoint.py", "tests/integration/test_s3_checkpoint_storage.py", "-m", "not slow"],
    ),
    "local_checkpoint": (
        "src/mltrain/train/local_checkpoint.py",
        ["tests/unit/test_checkpoint.py", "tests/unit/test_checkpoint_mutants.py"],
    ),
    "loader": ("src/mltrain/data/loader.py", ["tests/unit/test_data_loader.py"]),
    "lease": ("src/mltrain/lease.py", ["tests/unit/test_lease.py"]),
    # the moto S3 tests call the CLI in-process (moto_fixture.run_cli); the SIGKILL test's subprocess cannot
    # see mutants but its in-process re-run can
    "transfer": (
        "src/mltrain/storage/transfer.py",
        [
            "tests/unit/test_s3_digest.py",
            "tests/unit/test_s3_summary.py",
            "tests/integration/test_s3_transfer_rules.py",
            "tests/integration/test_s3_transfer.py",
            "tests/integration/test_s3_throttling.py",
            "tests/integration/test_s3_transfer_mutants.py",
            "tests/integration/test_s3_engines.py",  # which engine a direction takes, and why (in-process)
        ],
    ),
    "verify": (
        "src/mltrain/storage/verify.py",
        ["tests/integration/test_s3_verify.py", "tests/integration/test_s3_transfer.py"],
    ),
    "status": (
        "src/mltrain/launch/status.py",
        [
            "tests/unit/test_status.py",
            "tests/unit/test_status_ops.py",
            "tests/unit/test_status_words.py",
            "tests/unit/test_status_figures.py",
            "tests/unit/test_status_run_mutants.py",
        ],
    ),
    "health": ("src/mltrain/ops/health.py", ["tests/unit/test_ops_health.py"]),
    "planner": ("src/mltrain/cluster/planner.py", ["tests/unit/test_plan.py", "tests/unit/test_layout.py"]),
}
# What the tests read besides src/ and tests/ (relative to the repo root), linked into each work dir.
LINKED = ["src", "tests", "configs", "examples", "scripts"]
ALSO_COPY = ["configs", "examples", "scripts"]


def tests_of(name: str) -> list[str]:
    tests = list(MODULES[name][1])
    extra = f"tests/unit/test_{name}_mutants.py"
    if (ROOT / extra).exists():
        tests.append(extra)
    return tests


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def module_pyproject(name: str) -> str:
    """The repo's pyproject.toml (pytest's settings) with a [tool.mutmut] for this module only."""
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
    base = _base_mutmut_config()
    cfg = {
        **base,
        "only_mutate": [MODULES[name][0]],
        "pytest_add_cli_args_test_selection": tests_of(name),
        "also_copy": [p for p in ALSO_COPY if (ROOT / p).exists()],
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"]
    for k, v in cfg.items():
        lines.append(f"{k} = {_toml_list(v) if isinstance(v, list) else json.dumps(v)}")
    return text.rstrip() + "\n" + "\n".join(lines) + "\n"


def _base_mutmut_config() -> dict[str, Any]:
    import tomllib

    return dict(tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("mutmut", {}))


def prepare(name: str) -> Path:
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    for rel in LINKED:
        link = work / rel
        if (ROOT / rel).exists() and not link.is_symlink():
            link.symlink_to(ROOT / rel)
    (work / "pyproject.toml").write_text(module_pyproject(name))
    return work


def _retest_open_mutants(name: str) -> None:
    """Forget the result of every mutant that was not killed, so this run tests it again with today's
    tests (mutmut itself keeps a result until the function's source changes)."""
    meta = WORK / name / "mutants" / (MODULES[name][0] + ".meta")
    if not meta.exists():
        return
    data = json.loads(meta.read_text())
    codes = data["exit_code_by_key"]
    data["exit_code_by_key"] = {k: (v if v in (1, 3) else None) for k, v in codes.items()}
    meta.write_text(json.dumps(data))


def run_module(name: str, max_children: int, fresh: bool) -> float:
    """`mutmut run` in the module's work dir; its wall time in seconds."""
    if fresh:
        shutil.rmtree(WORK / name, ignore_errors=True)
    work = prepare(name)
    _retest_open_mutants(name)
    print(f"== {name}: {MODULES[name][0]} with {' '.join(tests_of(name))}", flush=True)
    mutmut = Path(sys.executable).with_name("mutmut")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLTRAIN_STRICT_SKIPS": ""}
    t0 = time.monotonic()
    for attempt in range(3):
        r = subprocess.run([str(mutmut), "run", "--max-children", str(max_children)], cwd=work, env=env)
        if r.returncode == 0:
            break
        # mutmut saves each result as it comes, so a run that died part-way goes on where it stopped
        print(f"mutmut run for {name} exited with {r.returncode} (attempt {attempt + 1})", file=sys.stderr)
    wall = time.monotonic() - t0
    with open(work / "wall_s.txt", "a") as f:  # one line per run: a module's result can take several
        f.write(f"{wall:.1f}\n")
    return wall


def _status_by_name(name: str) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    meta = WORK / name / "mutants" / (MODULES[name][0] + ".meta")
    if not meta.exists():
        return {}
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {k: status_by_exit_code[v] for k, v in sorted(codes.items())}


def _diffs(name: str, mutants: list[str]) -> dict[str, str]:
    """The diff of each mutant, from the module's work dir (mutmut reads its config from the cwd)."""
    if not mutants:
        return {}
    from mutmut import configuration
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    old = Path.cwd()
    os.chdir(WORK / name)
    configuration.reset_config()
    try:
        return {m: get_diff_for_mutant(m, path=MODULES[name][0]) for m in mutants}
    finally:
        os.chdir(old)
        configuration.reset_config()


def changed_lines(diff: str) -> list[str]:
    """The -/+ lines of a diff, stripped: what identifies a mutant across line moves."""
    return [ln[0] + ln[1:].strip() for ln in diff.splitlines() if ln[:1] in "-+" and not ln.startswith(("---", "+++"))]


def report_module(name: str, equivalent: dict[str, dict[str, Any]]) -> dict[str, Any]:
    statuses = _status_by_name(name)
    counts: dict[str, int] = {}
    for s in statuses.values():
        counts[s] = counts.get(s, 0) + 1
    open_ = [m for m, s in statuses.items() if s in ("survived", "no tests", "suspicious")]
    diffs = _diffs(name, open_)
    eq, stale, survivors = [], [], []
    for m in open_:
        judged = equivalent.get(m)
        if judged and changed_lines(diffs[m]) == judged.get("change", []):
            eq.append({"mutant": m, "reason": judged["reason"], "change": judged["change"]})
        else:
            if judged:
                stale.append(m)
            survivors.append({"mutant": m, "status": statuses[m], "change": changed_lines(diffs[m])})
    total = len(statuses)
    detected = counts.get("killed", 0) + counts.get("timeout", 0)
    denom = total - len(eq)
    wall = WORK / name / "wall_s.txt"
    runs = [float(x) for x in wall.read_text().split()] if wall.exists() else []
    return {
        "source": MODULES[name][0],
        "tests": tests_of(name),
        "total": total,
        "killed": counts.get("killed", 0),
        "timeout": counts.get("timeout", 0),
        "survived": counts.get("survived", 0),
        "no_tests": counts.get("no tests", 0),
        "suspicious": counts.get("suspicious", 0),
        "not_checked": counts.get("not checked", 0),
        "equivalent": len(eq),
        "score": round(detected / denom, 4) if denom else None,
        # when a run was cut short: the score over the mutants that were tested
        "score_of_checked": round(detected / (denom - counts.get("not checked", 0)), 4)
        if denom - counts.get("not checked", 0)
        else None,
        "wall_s": round(sum(runs), 1) if runs else None,
        "wall_s_per_run": runs,
        "equivalent_mutants": eq,
        "open_mutants": survivors,
        "stale_equivalent_judgements": stale,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("modules", nargs="*", help=f"default: all of {', '.join(MODULES)}")
    ap.add_argument("--max-children", type=int, default=1, help="mutants tested in parallel (default 1)")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results: test every mutant again")
    ap.add_argument("--report-only", action="store_true", help="write the results file from the last runs")
    ap.add_argument("--markdown", action="store_true", help="also print the table for docs/testing.md")
    ap.add_argument("--out", type=Path, default=None, help="default: bench/results/mutation-<date>.json")
    args = ap.parse_args(argv)
    names = args.modules or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
    if not args.report_only:
        for name in names:
            run_module(name, args.max_children, args.fresh)
    equivalent = yaml.safe_load(EQUIVALENT_FILE.read_text()) or {} if EQUIVALENT_FILE.exists() else {}
    out = args.out or ROOT / "bench" / "results" / f"mutation-{dt.date.today().isoformat()}.json"
    # A partial run updates the modules it ran and keeps the others of today's file.
    previous = json.loads(out.read_text()).get("modules", {}) if out.exists() else {}
    modules = {**previous, **{n: report_module(n, equivalent) for n in names if (WORK / n / "mutants").exists()}}
    result = {
        "date": dt.date.today().isoformat(),
        "tool": "mutmut " + _mutmut_version(),
        "score": "(killed + timeout) / (total - equivalent)",
        "modules": {n: modules[n] for n in MODULES if n in modules},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(
        f"\n{'module':<11}{'total':>6}{'killed':>7}{'timeout':>8}{'survived':>9}{'no tests':>9}{'equiv':>6}{'score':>7}"
    )
    for n, m in result["modules"].items():
        score = f"{m['score']:.1%}" if m["score"] is not None else "-"
        print(
            f"{n:<11}{m['total']:>6}{m['killed']:>7}{m['timeout']:>8}{m['survived']:>9}{m['no_tests']:>9}"
            f"{m['equivalent']:>6}{score:>7}"
        )
        for s in m["stale_equivalent_judgements"]:
            print(f"  stale equivalent judgement (the mutant changed): {s}")
    print(f"wrote {out.relative_to(ROOT)}")
    if args.markdown:
        print("\n" + markdown_table(result))
    return 0


def markdown_table(result: dict[str, Any]) -> str:
    """The per-module table of docs/testing.md."""
    rows = [
        "| module | mutants | killed | timeout | survived | no tests | not tested | equivalent | score | "
        "score of the tested | mutmut wall time (all runs) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in result["modules"].values():
        score = f"{m['score']:.1%}" if m["score"] is not None else "-"
        tested = f"{m['score_of_checked']:.1%}" if m.get("score_of_checked") is not None else "-"
        wall = f"{m['wall_s'] / 60:.1f} min" if m["wall_s"] else "-"
        rows.append(
            f"| `{m['source'].removeprefix('src/mltrain/')}` | {m['total']} | {m['killed']} | {m['timeout']} | "
            f"{m['survived']} | {m['no_tests']} | {m['not_checked']} | {m['equivalent']} | {score} | {tested} | {wall} |"
        )
    return "\n".join(rows)


def _mutmut_version() -> str:
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    sys.exit(main())
