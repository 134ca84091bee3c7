"""Fixtures of the doc tests: the local S3 server and the local Slurm the integration tests use."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from moto_fixture import DUMMY_ENV, moto_s3  # noqa: E402,F401  (the session's moto S3 server)
from slurm_fixture import local_slurm  # noqa: E402,F401  (the local Slurm cluster, brought up on first use)

__all__ = ["DUMMY_ENV"]
