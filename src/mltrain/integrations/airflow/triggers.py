"""RunStatusTrigger: waits on a run's truthful status in the triggerer, holding no worker slot.

It polls mltrain.launch.status (through the pipeline's runner: here, or `mltrain status --json` over SSH)
every poll_s seconds and fires once the run is done, or failed with no job left to finish it. A requeue
(the batch script's own recovery after a preemption, a hang or a lost node) keeps it waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from mltrain.integrations.pipeline import ABSENT, DONE, FAILED, Pipeline, classify
from mltrain.integrations.pipeline_config import load_pipeline

MAX_STATUS_ERRORS = 10  # consecutive failures to read the status (SSH down, a slow file system) before giving up


class RunStatusTrigger(BaseTrigger):
    """Fires {outcome: done|failed|absent, cause, run_name, state} for the run of one dataset version."""

    def __init__(self, pipeline: str, data_uri: str, manifest_sha256: str, poll_s: float = 60.0) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.data_uri = data_uri
        self.manifest_sha256 = manifest_sha256
        self.poll_s = poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "pipeline": self.pipeline,
                "data_uri": self.data_uri,
                "manifest_sha256": self.manifest_sha256,
                "poll_s": self.poll_s,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        pipe = Pipeline(
            load_pipeline(self.pipeline), self.data_uri, manifest_sha256=self.manifest_sha256, log=self.log.info
        )
        last, errors = None, 0
        while True:
            try:
                st = await asyncio.to_thread(pipe.status)
                errors = 0
            except Exception as e:  # a passing failure to read the status is not the run's failure
                errors += 1
                self.log.warning("status of run %s unreadable (%d): %s", pipe.run_name, errors, e)
                if errors >= MAX_STATUS_ERRORS:
                    yield TriggerEvent(
                        {"outcome": FAILED, "cause": f"status unreadable: {e}", "run_name": pipe.run_name}
                    )
                    return
                await asyncio.sleep(self.poll_s)
                continue
            outcome, why = classify(st)
            if why != last:
                self.log.info("run %s: %s", pipe.run_name, why)
                last = why
            if outcome in (DONE, FAILED, ABSENT):
                yield TriggerEvent(
                    {"outcome": outcome, "cause": why, "run_name": pipe.run_name, "state": (st or {}).get("state")}
                )
                return
            await asyncio.sleep(self.poll_s)
