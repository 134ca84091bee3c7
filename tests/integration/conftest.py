"""Fixtures shared by the integration tests. The local Slurm cluster lives in slurm_fixture.py."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from moto_fixture import bucket, moto_s3, moto_s3_with_auth, s3, s3_env  # noqa: E402,F401  (moto S3 server fixtures)
from slurm_fixture import local_slurm  # noqa: E402,F401  (a session fixture for tests/integration/test_slurm*.py)
