"""While slurmctld does not answer (a controller restart or failover on a real cluster), a run whose job
Slurm cannot be asked about is "unknown", never "gone": `mltrain status` says so in one line, the pipeline
waits on it instead of submitting again, and `mltrain submit` refuses to start a second job. The local
cluster's slurmctld is stopped for real and started again by scripts/local-slurm/up.sh; the job is held
(`#SBATCH --hold` from the cluster spec's extra_sbatch) so that it stays pending: no lease of a live
trainer can vouch for it."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from slurm_fixture import SLURM_DIR, daemon_alive, make_env, records, up

from mltrain.integrations.pipeline import WAITING, classify

pytestmark = pytest.mark.slurm


def _stop_slurmctld() -> None:
    pidfile = SLURM_DIR / "run" / "slurmctld.pid"
    os.kill(int(pidfile.read_text()), 15)
    deadline = time.monotonic() + 30
    while daemon_alive(pidfile):
        assert time.monotonic() < deadline, "slurmctld did not stop within 30 s"
        time.sleep(0.1)


def test_a_job_slurm_cannot_be_asked_about_is_unknown_not_gone(local_slurm, tmp_path_factory):
    env = make_env(tmp_path_factory, "ctld-down")
    spec = env.cluster.read_text().replace("slurm:\n", "slurm:\n  extra_sbatch: [--hold]\n", 1)
    assert "--hold" in spec
    env.cluster.write_text(spec)
    job, run = env.submit("ctld-down")
    try:
        before = json.loads(env.mltrain("status", str(run), "--json"))[0]
        assert before["state"] == "pending" and before["job_id"] == job

        _stop_slurmctld()
        try:
            row = json.loads(env.mltrain("status", str(run), "--json"))[0]
            assert row["state"] == "unknown", row
            assert f"Slurm did not answer about job {job}: " in row["explanation"]
            assert "Unable to contact slurm controller" in row["explanation"]
            assert classify(row)[0] == WAITING  # the pipeline waits and asks again; it does not resubmit

            p = env.run_mltrain(*env.submit_args("ctld-down"))
            assert p.returncode != 0
            lines = [x for x in p.stderr.splitlines() if x.strip()]
            assert len(lines) == 1 and f"cannot tell whether its job {job} is still queued" in lines[0], p.stderr
            assert "Traceback" not in p.stderr
            submits = [r for r in records(run / "slurm" / "jobs.jsonl") if r.get("event", "submit") == "submit"]
            assert [str(r["job_id"]) for r in submits] == [job]  # no second job
        finally:
            up()

        after = json.loads(env.mltrain("status", str(run), "--json"))[0]
        assert after["state"] == "pending" and after["job_id"] == job  # the held job outlived the restart
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=60)
