"""Fixtures of the doc tests: the local S3 server and the local Slurm the integration tests use."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from moto_fixture import DUMMY_ENV, moto_s3  # noqa: E402,F401  (the session's moto S3 server)
from slurm_fixture import local_slurm  # noqa: E402,F401  (the local Slurm cluster, brought up on first use)

__all__ = ["DUMMY_ENV"]


@pytest.fixture(scope="session")
def doc_fixture_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """name -> the work directory of a doc-test fixture (runner.FIXTURES), built once per session: the
    pytest-xdist workers share one cache under a file lock."""
    from filelock import FileLock

    from tests.docs.runner import build_fixture

    base = tmp_path_factory.getbasetemp()
    worker = hasattr(request.config, "workerinput")  # a pytest-xdist worker: the workers' temp dirs share a parent
    cache = (base.parent if worker else base) / "doc-fixtures"
    cache.mkdir(exist_ok=True)

    def get(name: str) -> Path:
        with FileLock(str(cache / f"{name}.lock")):
            return build_fixture(name, cache)

    return get
