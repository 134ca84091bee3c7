"""Host memory tuning for CPU training (train/host_alloc.py): when `mltrain train` re-executes itself with
glibc's huge-page heap, and that the processes it starts really run with it (a real `mltrain train` of a
script run whose ranks report their environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mltrain.train import host_alloc as H


def _glibc_ok() -> bool:
    try:
        lib, _, ver = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
        return lib == "glibc" and tuple(int(x) for x in ver.split(".")[:2]) >= (2, 35)
    except (OSError, ValueError):
        return False


def test_hugepage_tunables_decisions(tmp_path: Path) -> None:
    thp = tmp_path / "enabled"
    thp.write_text("always [madvise] never\n")
    if not (_glibc_ok() and sys.platform.startswith("linux")):
        assert H.hugepage_tunables({}, str(thp)) is None
        return
    assert H.hugepage_tunables({}, str(thp)) == H.HUGEPAGE_TUNABLE
    # other tunables are kept, the setting is added once
    assert H.hugepage_tunables({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, str(thp)) == (
        "glibc.malloc.arena_max=2:" + H.HUGEPAGE_TUNABLE
    )
    assert H.hugepage_tunables({"GLIBC_TUNABLES": H.HUGEPAGE_TUNABLE}, str(thp)) is None  # already set: no loop
    assert H.hugepage_tunables({H.OPT_OUT_ENV: "0"}, str(thp)) is None
    thp.write_text("always madvise [never]\n")
    assert H.hugepage_tunables({}, str(thp)) is None  # THP off: nothing to gain
    assert H.hugepage_tunables({}, str(tmp_path / "missing")) is None


REPORT = """\
import json, os
from mltrain import runtime
open(f"env{runtime.rank()}.json", "w").write(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES")}))
"""


@pytest.mark.skipif(
    H.hugepage_tunables({k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}) is None,
    reason="no glibc >= 2.35 with transparent huge pages here",
)
def test_mltrain_train_runs_its_processes_with_the_hugepage_heap(tmp_path: Path) -> None:
    (tmp_path / "report.py").write_text(REPORT)
    (tmp_path / "run.yaml").write_text(f"name: env\nbase_dir: {tmp_path}\nscript: {{path: report.py}}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", H.OPT_OUT_ENV)}
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "train", "run.yaml", "--nproc", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"env{rank}.json").read_text())["tunables"]
        assert seen is not None and H.HUGEPAGE_TUNABLE in seen
    opted_out = subprocess.run(
        [sys.executable, "-m", "mltrain", "train", "run.yaml", "--nproc", "1"],
        cwd=tmp_path,
        env={**env, H.OPT_OUT_ENV: "0"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert opted_out.returncode == 0, opted_out.stderr[-2000:]
    assert json.loads((tmp_path / "env0.json").read_text())["tunables"] is None
