"""A pytest plugin (loaded by tests/conftest.py): under CI=true or MLTRAIN_STRICT_SKIPS=1, a skipped test
whose reason is not on ALLOWED_SKIPS fails the session, so a broken install (a missing optional
package, no Slurm, no trainer) cannot pass as green. Skips of whole files count too.
"""

from __future__ import annotations

import os
import re

import pytest

# reason pattern -> why that skip is legitimate in CI (keep this list short and each entry explained)
ALLOWED_SKIPS: dict[str, str] = {
    r"\b(CUDA|GPU|GPUs)\b": "GPU-only tests on a CPU machine, and CPU-only checks on a GPU machine",
    r"root can read a mode-000 file": "permission tests cannot fail for root, and CI runs as root",
    r"cannot mount a tmpfs here": "containers without CAP_SYS_ADMIN; a unit test covers the same path",
    r"a process group is already initialised in this process": "test order in one process, not the install",
    r"no glibc >= 2\.35 with transparent huge pages here": "a kernel/libc property of the CI host, not of the "
    "install; the decision logic is unit-tested either way",
}

_SKIPS: list[tuple[str, str]] = []


def strict() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or os.environ.get(
        "MLTRAIN_STRICT_SKIPS", ""
    ).lower() in ("1", "true", "yes")


def _reason(report: pytest.CollectReport | pytest.TestReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:
        return str(lr[2]).removeprefix("Skipped: ")
    return str(lr)


def allowed(reason: str) -> bool:
    return any(re.search(p, reason) for p in ALLOWED_SKIPS)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPS.append((report.nodeid, _reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _SKIPS.append((report.nodeid or "(collection)", _reason(report)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not strict():
        return
    bad = [(node, reason) for node, reason in _SKIPS if not allowed(reason)]
    if not bad:
        return
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"{len(bad)} skip(s) not on the allow-list (tests/strict_skips.py ALLOWED_SKIPS) under strict skips:"]
    lines += [f"  {node}: {reason}" for node, reason in bad]
    for line in lines:
        if tr is not None:
            tr.write_line(line, red=True)
        else:  # pragma: no cover
            print(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
