"""Fixtures shared by the integration tests. The local Slurm cluster lives in slurm_fixture.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
from moto_fixture import bucket, moto_s3, moto_s3_with_auth, s3, s3_env  # noqa: E402,F401  (moto S3 server fixtures)
from slurm_fixture import local_slurm, no_leftover_jobs  # noqa: E402,F401  (fixtures of the tests marked slurm)
from sshd_fixture import sshd  # noqa: E402,F401  (an OpenSSH server on 127.0.0.1: the pipeline's head node)


@pytest.fixture(autouse=True)
def _slurm_tests_leave_no_jobs(request: pytest.FixtureRequest) -> None:
    """`no_leftover_jobs` for every test marked slurm (and only those: it needs the local cluster)."""
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("no_leftover_jobs")
