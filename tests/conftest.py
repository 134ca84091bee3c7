"""Shared fixtures: a small prepared corpus for end-to-end tests."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers import mltrain_cmd, tiny_run_config, write_config  # noqa: F401  (re-exported)
from tests.strict_skips import (  # noqa: F401  (hooks: CI fails on a skip that is not on the allow-list)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
)

ROOT = Path(__file__).resolve().parents[1]

# Two cores: keep every worker single-threaded so 2-process runs do not oversubscribe.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that launch torchrun (`slow`, up to two minutes each) run first, the rest after them in their
    own order: scripts/run-tests.sh has pytest-xdist hand out one test at a time in collection order, so the
    long ones are spread over both workers and no slow test runs alone on one core at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """~300 KB of the standard library, tokenized with a 1k BPE; shared by every end-to-end test."""
    from mltrain.config import RunConfig
    from mltrain.data.prepare import prepare_data

    d = tmp_path_factory.mktemp("tiny-data") / "data"
    cfg = RunConfig.model_validate(
        {
            "name": "prep",
            "model": {"preset": "tiny"},
            "data": {
                "sources": ["builtin:python-stdlib"],
                "dir": str(d),
                "max_source_bytes": 300_000,
                "bpe_vocab_size": 1024,
                "shard_tokens": 40_000,
                "val_fraction": 0.05,
            },
        }
    )
    prepare_data(cfg)
    return d


@pytest.fixture
def keep_signal_handlers():
    """StopRequest installs SIGINT/SIGTERM/SIGUSR1 handlers: give pytest its own back."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    saved = {s: signal.getsignal(s) for s in sigs}
    yield
    for s, h in saved.items():
        signal.signal(s, h)
