"""`mltrain submit` refuses what can only fail, with one line and before sbatch runs: bad --nodes, an unknown
instance type (plan and `cluster render` refuse it too), a requeue grace as long as the time limit,
launch.min_nodes above the job's nodes, a run whose trainer prechecks fail (no prepared data), a run dir
whose lease a live process holds. Also: the rendezvous port is a free port of the first node unless the
spec pins it, and min_nodes reaches the script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mltrain.errors import ConfigError, LaunchError, RunDirError
from mltrain.launch.slurm import prepare_submission, submit_run

ROOT = Path(__file__).resolve().parents[2]
RUN_YAML = ROOT / "tests" / "golden" / "sbatch" / "run.yaml"
P5 = ROOT / "configs" / "clusters" / "p5-16.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mltrain", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("nodes", ["0", "-3"])
def test_nonpositive_nodes_refused_with_one_line(nodes: str) -> None:
    p = _cli("submit", str(RUN_YAML), "--cluster", str(P5), "--nodes", nodes, "--dry-run")
    assert p.returncode != 0 and "#SBATCH" not in p.stdout
    assert f"--nodes {nodes}: must be at least 1" in p.stderr and "Traceback" not in p.stderr


def test_typo_instance_type_refused_like_plan(tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(P5.read_text().replace("p5.48xlarge", "p5.96xlarge"))
    p = _cli("submit", str(RUN_YAML), "--cluster", str(spec), "--dry-run")
    assert p.returncode != 0 and "#SBATCH" not in p.stdout and "Traceback" not in p.stderr
    assert "unknown instance type 'p5.96xlarge'" in p.stderr and "p5.48xlarge" in p.stderr  # with a suggestion


def test_grace_not_shorter_than_time_limit_refused() -> None:
    with pytest.raises(ConfigError, match=r"launch.requeue_grace_s=120: must be shorter than the time limit 00:01:00"):
        prepare_submission(RUN_YAML, P5, overrides=["launch.requeue_grace_s=120"], time="00:01:00")
    sub = prepare_submission(RUN_YAML, P5, overrides=["launch.requeue_grace_s=59"], time="00:01:00", hyperpod=False)
    assert "#SBATCH --signal=B:USR1@59\n" in sub.script and "TIME_LIMIT_S=60\n" in sub.script


def test_min_nodes_rendered_and_checked() -> None:
    sub = prepare_submission(RUN_YAML, P5, overrides=["launch.min_nodes=12"], hyperpod=False)
    assert "MIN_NODES=12\n" in sub.script and "MAX_PREEMPTIONS=3\n" in sub.script
    assert "MIN_NODES=16\n" in prepare_submission(RUN_YAML, P5, hyperpod=False).script  # default: never shrink
    with pytest.raises(ConfigError, match="launch.min_nodes=9: larger than the job's 8 nodes"):
        prepare_submission(RUN_YAML, P5, overrides=["launch.min_nodes=9"], nodes=8)


def test_pinned_rendezvous_port(tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text(P5.read_text().replace("slurm:\n", "slurm:\n  rdzv_port: 29777\n", 1))
    sub = prepare_submission(RUN_YAML, spec, hyperpod=False)
    assert "MASTER_PORT=29777" in sub.script and "SLURM_JOB_ID % 2000" not in sub.script
    assert "rdzv_port()" not in sub.script and "MASTER_PORT=$(rdzv_port)" not in sub.script


def _rdzv_port_function(script: str) -> str:
    start = script.index("rdzv_port() {")
    return script[start : script.index("\n}\n", start) + 3]


def test_rendezvous_port_is_a_free_port_of_the_first_node() -> None:
    """The batch script (on the allocation's first node, where the c10d store listens) asks its OS for a
    free port below the ephemeral range before each torchrun start, so two jobs sharing a node never share
    a store (a port derived from the job id would: jobs 4015 and 2015 under 29500 + id % 2000); --dry-run
    shows it."""
    import socket

    p = _cli("submit", str(RUN_YAML), "--cluster", str(P5), "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "# rendezvous port: asked of this node's OS before each torchrun start" in p.stdout
    assert "  MASTER_PORT=$(rdzv_port)\n" in p.stdout and '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"' in p.stdout
    fn = _rdzv_port_function(p.stdout)
    lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    # the job-id rule's port for job 4015 (29515) is held by another process: never handed out
    with socket.socket() as held:
        try:
            held.bind(("", 29515))
            held.listen()
        except OSError:  # in use already (a torchrun of a test running alongside): held all the same
            pass
        ports = set()
        for _ in range(5):
            r = subprocess.run(
                ["bash", "-c", fn + "rdzv_port"], env={"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": "4015"}, **_TXT
            )
            ports.add(int(r.stdout))
    assert 29515 not in ports and all(20000 <= port < max(lo, 20001) for port in ports), ports
    for port in ports:  # free when handed out
        with socket.socket() as s:
            s.bind(("", port))


_TXT = {"capture_output": True, "text": True, "check": True, "timeout": 30}


@pytest.fixture
def fake_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An sbatch that records that it was called (these tests must refuse before it runs)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch.calls"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho 123\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    return calls


def _local_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "local.yaml"
    spec.write_text(
        (ROOT / "configs/clusters/local.yaml").read_text().replace("run_base_dir: .", f"run_base_dir: {tmp_path}")
    )
    return spec


def test_submit_runs_trainer_prechecks_before_sbatch(tmp_path: Path, fake_sbatch: Path) -> None:
    with pytest.raises(Exception, match="no prepared data") as e:
        submit_run(RUN_YAML, _local_spec(tmp_path), overrides=[f"data.dir={tmp_path / 'nodata'}"])
    assert "Traceback" not in str(e.value) and not fake_sbatch.exists()
    assert not (tmp_path / "runs" / "golden" / "slurm" / "jobs.jsonl").exists()


def test_submit_refuses_a_run_dir_held_by_a_live_trainer(
    tmp_path: Path, fake_sbatch: Path, monkeypatch: pytest.MonkeyPatch, tiny_data_dir: Path
) -> None:
    """A real lease (mltrain.lease) held by another live process, as a running trainer holds it: refused
    with who holds it; once that process is gone the submit goes through."""
    run_dir = tmp_path / "runs" / "golden"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mltrain.lease import acquire_lease; "
            "acquire_lease(sys.argv[1], job_id='99'); print('held', flush=True); time.sleep(60)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(
            RunDirError, match=f"in use by a running trainer \\(host .+, pid {holder.pid}, job_id 99\\)"
        ):
            submit_run(
                RUN_YAML, _local_spec(tmp_path), overrides=[f"data.dir={tiny_data_dir}", "model.vocab_size=1024"]
            )
        assert not fake_sbatch.exists()
    finally:
        holder.kill()
        holder.wait()
    job = submit_run(RUN_YAML, _local_spec(tmp_path), overrides=[f"data.dir={tiny_data_dir}", "model.vocab_size=1024"])
    assert job == "123" and fake_sbatch.exists()


def test_launch_errors_are_mltrain_errors() -> None:
    with pytest.raises(LaunchError, match="must be at least 1"):
        prepare_submission(RUN_YAML, P5, nodes=-3)


@pytest.mark.parametrize(
    "given, normal, seconds",
    [
        ("2", "00:02:00", 120),
        ("90", "01:30:00", 5400),
        ("5:30", "00:05:30", 330),
        ("12:00:00", "12:00:00", 43200),
        ("1-0", "1-00:00:00", 86400),
        ("2-12", "2-12:00:00", 216000),
        ("1-2:30", "1-02:30:00", 95400),
        ("3-04:05:06", "3-04:05:06", 273906),
        ("100:00:00", "100:00:00", 360000),
    ],
)
def test_time_takes_every_slurm_form(given: str, normal: str, seconds: int) -> None:
    """`--time` takes every form sbatch takes (`2` is two minutes to Slurm), not only HH:MM:SS and D-HH:MM:SS."""
    from mltrain.launch.slurm import normalize_time

    assert normalize_time(given) == (normal, seconds)
    sub = prepare_submission(RUN_YAML, P5, time=given, overrides=["launch.requeue_grace_s=30"], hyperpod=False)
    assert f"#SBATCH --time={normal}\n" in sub.script and f"TIME_LIMIT_S={seconds}\n" in sub.script


@pytest.mark.parametrize("bad", [" ", "0", "two", "1:2:3:4", "1-", "-5", "5:75", "1-25", "UNLIMITED"])
def test_time_refuses_what_slurm_refuses(bad: str) -> None:
    with pytest.raises(ConfigError, match="--time"):
        prepare_submission(RUN_YAML, P5, time=bad, hyperpod=False)


def test_cli_time_in_minutes_and_one_line_refusals() -> None:
    p = _cli(
        "submit", str(RUN_YAML), "--cluster", str(P5), "--time", "2", "--dry-run", "--set", "launch.requeue_grace_s=30"
    )
    assert p.returncode == 0, p.stderr
    assert "#SBATCH --time=00:02:00\n" in p.stdout
    p = _cli("submit", str(RUN_YAML), "--cluster", str(P5), "--time", "2:xx", "--dry-run")
    assert p.returncode == 2 and "--time '2:xx'" in p.stderr and "Traceback" not in p.stderr


def test_every_submit_refusal_exits_2(tmp_path: Path, fake_sbatch: Path) -> None:
    """Every refusal before sbatch exits 2, the missing prepared data (no manifest) too."""
    spec = _local_spec(tmp_path)
    nodata = _cli("submit", str(RUN_YAML), "--cluster", str(spec), "--set", f"data.dir={tmp_path / 'nodata'}")
    assert nodata.returncode == 2 and "no prepared data" in nodata.stderr, nodata.stderr
    assert len(nodata.stderr.strip().splitlines()) == 1 and not fake_sbatch.exists()
    for args in (["--nodes", "0"], ["--nodes", "99"], ["--set", "launch.requeue_grace_s=999999"]):
        p = _cli("submit", str(RUN_YAML), "--cluster", str(P5), "--dry-run", *args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)


@pytest.mark.parametrize("given, normal", [("90", "01:30:00"), ("2-12", "2-12:00:00"), ("12:00:00", "12:00:00")])
def test_cluster_spec_time_takes_every_slurm_form(tmp_path: Path, given: str, normal: str) -> None:
    """The cluster spec's slurm.time takes what --time takes (it refused `90` and `2-12`) and renders normalised."""
    import yaml

    from mltrain.cluster.spec import load_cluster_spec

    assert load_cluster_spec(P5, overrides=[f"slurm.time={given}"]).slurm.time == normal
    raw = yaml.safe_load(P5.read_text())
    raw.setdefault("slurm", {})["time"] = int(given) if given.isdigit() else given  # `time: 90` is a YAML number
    spec = tmp_path / "cluster.yaml"
    spec.write_text(yaml.safe_dump(raw))
    sub = prepare_submission(RUN_YAML, spec, overrides=["launch.requeue_grace_s=30"], hyperpod=False)
    assert f"#SBATCH --time={normal}\n" in sub.script


def test_cluster_spec_time_typo_names_the_file_and_key() -> None:
    from mltrain.cluster.spec import load_cluster_spec

    with pytest.raises(ConfigError, match=r"slurm\.time.*Slurm time limit"):
        load_cluster_spec(P5, overrides=["slurm.time=5:75"])


def test_unquoted_hh_mm_ss_is_not_yaml_base_60(tmp_path: Path) -> None:
    """YAML 1.1 reads an unquoted `time: 12:00:00` as the integer 43200 (base 60): as minutes that is 30 days."""
    spec = tmp_path / "cluster.yaml"
    spec.write_text(P5.read_text().replace('time: "24:00:00"', "time: 12:00:00"))
    assert "time: 12:00:00" in spec.read_text()
    sub = prepare_submission(RUN_YAML, spec, overrides=["launch.requeue_grace_s=30"], hyperpod=False)
    assert "#SBATCH --time=12:00:00\n" in sub.script
