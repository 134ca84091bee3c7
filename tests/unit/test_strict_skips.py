"""CI fails on a skip that is not on the allow-list (tests/strict_skips.py): a real pytest run per case."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CASES = """
import pytest

def test_ok():
    pass

def test_skip():
    pytest.skip("{reason}")
"""


def _pytest(tmp_path: Path, body: str, strict_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_case.py").write_text(body)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "MLTRAIN_STRICT_SKIPS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.strict_skips",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tmp_path / "test_case.py"),
            "-W",
            "ignore",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, **strict_env},
    )


@pytest.mark.parametrize(
    "reason, strict_env, rc",
    [
        ("aws-parallelcluster not installed", {"CI": "true"}, 1),
        ("aws-parallelcluster not installed", {"MLTRAIN_STRICT_SKIPS": "1"}, 1),
        ("aws-parallelcluster not installed", {}, 0),  # a developer's machine: a skip stays a skip
        ("needs a CUDA device", {"CI": "true"}, 0),  # on the allow-list
    ],
)
def test_skip_fails_ci_unless_allowed(tmp_path, reason, strict_env, rc):
    r = _pytest(tmp_path, CASES.format(reason=reason), strict_env)
    assert r.returncode == rc, r.stdout + r.stderr
    if rc:
        assert "not on the allow-list" in r.stdout and "aws-parallelcluster not installed" in r.stdout


def test_module_level_skip_fails_ci(tmp_path):
    body = 'import pytest\npytest.importorskip("no_such_package_for_mltrain")\n\ndef test_x():\n    pass\n'
    r = _pytest(tmp_path, body, {"CI": "true"})
    assert r.returncode == 1 and "no_such_package_for_mltrain" in r.stdout, r.stdout + r.stderr
