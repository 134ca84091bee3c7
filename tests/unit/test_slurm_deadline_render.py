"""`mltrain submit --deadline`: the deadline reaches the job (MLTRAIN_DEADLINE), a capacity block's end becomes
the time its instances start terminating, the job's --time is capped to it, and a bad or past deadline is one
line before anything is written."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mltrain.cluster.capacity import BLOCK_TERMINATION_LEAD_S
from mltrain.launch.slurm import capped_time, job_deadline, prepare_submission
from mltrain.train.deadline import SOURCE_BLOCK, SOURCE_FLAG, Deadline, DeadlineError, env_deadline, format_utc

ROOT = Path(__file__).resolve().parents[2]
RUN_YAML = ROOT / "tests" / "golden" / "sbatch" / "run.yaml"
P5_BLOCK = ROOT / "configs" / "clusters" / "p5-16.yaml"  # capacity_type: capacity_block, time 24:00:00
P5E_ODCR = ROOT / "configs" / "clusters" / "p5e-80.yaml"  # capacity_type: odcr, time 48:00:00
NOW = 1_797_761_400.0  # 2026-12-20T10:10:00Z


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mltrain", *args], capture_output=True, text=True, timeout=120)


def test_a_capacity_blocks_end_is_moved_to_when_its_instances_start_terminating() -> None:
    from mltrain.cluster.spec import load_cluster_spec

    block, odcr = load_cluster_spec(P5_BLOCK), load_cluster_spec(P5E_ODCR)
    end = NOW + 80 * 60  # 11:30
    assert job_deadline("2026-12-20T11:30Z", block, NOW) == Deadline(end - BLOCK_TERMINATION_LEAD_S, SOURCE_BLOCK)
    assert job_deadline("2026-12-20T11:30Z", odcr, NOW) == Deadline(end, SOURCE_FLAG)
    with pytest.raises(DeadlineError, match=r"start terminating at 2026-12-20T10:00:00Z \(30 min before its end\)"):
        job_deadline("+20m", block, NOW)
    with pytest.raises(DeadlineError, match="is in the past"):
        job_deadline("2026-12-20T10:00Z", odcr, NOW)


def test_the_time_limit_is_capped_to_the_deadline_plus_the_grace() -> None:
    d = Deadline(NOW + 3600, SOURCE_FLAG)
    assert capped_time("24:00:00", d, 120, NOW) == "63"  # + the grace + the minute Slurm may signal early
    assert capped_time("00:30:00", d, 120, NOW) is None  # already shorter: kept
    assert capped_time("24:00:00", Deadline(NOW + 3601, SOURCE_FLAG), 120, NOW) == "64"  # rounded up


def test_submit_renders_the_deadline_and_the_capped_time() -> None:
    t0 = time.time()
    sub = prepare_submission(RUN_YAML, P5_BLOCK, deadline="+3h", hyperpod=False)
    assert sub.deadline is not None and sub.deadline.source == SOURCE_BLOCK
    assert int(t0) + 3 * 3600 - BLOCK_TERMINATION_LEAD_S <= sub.deadline.at <= time.time() + 3 * 3600 - 1800
    env = dict(re.findall(r"^export (MLTRAIN_DEADLINE\w*)=(.*)$", sub.script, re.M))
    assert env == {"MLTRAIN_DEADLINE": format_utc(sub.deadline.at), "MLTRAIN_DEADLINE_SOURCE": "'capacity block end'"}
    assert env_deadline({"MLTRAIN_DEADLINE": env["MLTRAIN_DEADLINE"]}).at == sub.deadline.at
    limit = re.search(r"^#SBATCH --time=(\S+)$", sub.script, re.M).group(1)
    grace = int(re.search(r"^#SBATCH --signal=B:USR1@(\d+)$", sub.script, re.M).group(1))
    assert sub.time is not None and limit == f"0{int(sub.time) // 60}:{int(sub.time) % 60:02d}:00"
    # the USR1 warning of the capped limit (up to 60 s early) never comes before the deadline, even if the job
    # starts at once
    assert int(sub.time) * 60 - grace - 60 >= sub.deadline.at - time.time()
    assert "MLTRAIN_DEADLINE" not in prepare_submission(RUN_YAML, P5_BLOCK, hyperpod=False).script


def test_submit_dry_run_and_train_refuse_a_bad_deadline_in_one_line() -> None:
    p = _cli("submit", str(RUN_YAML), "--cluster", str(P5E_ODCR), "--deadline", "next tuesday", "--dry-run")
    assert p.returncode == 2 and "#SBATCH" not in p.stdout and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: --deadline 'next tuesday': not a time; give a UTC time like 2026-12-20T11:30Z or a relative "
        "+90m / +2h / +1d"
    ]
    p = _cli("train", str(ROOT / "configs" / "demo.yaml"), "--deadline", "2026-12-20T11:30")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert (
        p.stderr.strip() == "error: --deadline '2026-12-20T11:30': no time zone; add Z for UTC (e.g. 2026-12-20T11:30Z)"
    )
