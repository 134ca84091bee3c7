"""`mltrain cluster create|update|delete|status`: the exact `pcluster` commands.

No AWS account exists here, so the ParallelCluster CLI cannot really run: the tests put a STUB `pcluster`
on PATH (a tiny script that appends its argv to a file and answers describe-cluster with the states a
test asks for). The dry run is compared with a golden file; preflight-before-create runs for real
against moto's server.

UPDATE_GOLDEN=1 pytest tests/unit/test_cluster_create.py   rewrites tests/golden/cluster/*.txt
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from mltrain.cluster.create import cluster_action
from mltrain.errors import ClusterError

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "cluster"

STUB = """#!{python}
# STUB of the AWS ParallelCluster CLI for tests: no AWS account exists here. Records argv, answers JSON.
import json, os, sys
log = os.environ["STUB_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
cmd = sys.argv[1] if len(sys.argv) > 1 else ""
if cmd == "version":
    if os.environ.get("STUB_BROKEN"):
        sys.stderr.write("ModuleNotFoundError: No module named 'flask'\\n")
        sys.exit(1)
    print(json.dumps({{"version": "3.16.1"}}))
    sys.exit(0)
name = sys.argv[sys.argv.index("--cluster-name") + 1]
if cmd == "describe-cluster":
    calls = sum(1 for line in open(log) if '"describe-cluster"' in line)
    states = os.environ.get("STUB_STATES", "CREATE_COMPLETE").split(",")
    state = states[min(calls, len(states)) - 1]
    if state == "GONE":
        print(json.dumps({{"message": f"Cluster '{{name}}' does not exist or belongs to an incompatible ParallelCluster major version."}}))
        sys.exit(1)
    doc = {{"clusterName": name, "clusterStatus": state, "cloudformationStackStatus": state, "region": "r",
           "version": "3.16.1", "computeFleetStatus": "RUNNING",
           "headNode": {{"publicIpAddress": "198.51.100.10", "privateIpAddress": "10.0.128.5"}}}}
    if state.endswith("FAILED"):
        doc["failures"] = [{{"failureCode": "HeadNodeBootstrapFailure", "failureReason": "Cluster creation timed out."}}]
    print(json.dumps(doc))
    sys.exit(0)
if os.environ.get("STUB_FAIL"):
    print(json.dumps({{"message": os.environ["STUB_FAIL"],
                       "configurationValidationErrors": [{{"level": "ERROR", "type": "KeyPairValidator",
                                                           "message": "The key pair 'mltrain' does not exist"}}]}}))
    sys.exit(1)
print(json.dumps({{"cluster": {{"clusterName": name, "clusterStatus": "CREATE_IN_PROGRESS"}}}}))
"""


@pytest.fixture
def stub(tmp_path, monkeypatch) -> Path:
    """A stub `pcluster` first on PATH; returns its argv log (one JSON list per call)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "pcluster"
    exe.write_text(STUB.format(python=sys.executable))
    exe.chmod(0o755)
    log = tmp_path / "pcluster-argv.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_LOG", str(log))
    monkeypatch.chdir(tmp_path)
    return log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _console() -> Console:
    return Console(record=True, width=100, color_system=None)


P5E = ROOT / "configs" / "clusters" / "p5e-80.yaml"
DESCRIBE = ["describe-cluster", "--cluster-name", "p5e-80", "--region", "ap-southeast-3"]


def test_dry_run_golden(tmp_path, monkeypatch):
    """`--dry-run` as a user types it (create through the CLI, the others in-process): relative paths,
    nothing called (no pcluster on PATH), the config written and valid."""
    (tmp_path / "configs").mkdir()
    shutil.copy(P5E, tmp_path / "configs" / "p5e-80.yaml")
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "cluster", "create", "configs/p5e-80.yaml", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PATH": str(tmp_path), "COLUMNS": "200"},  # no pcluster: a dry run needs none
    )
    assert r.returncode == 0, r.stderr
    out = [f"$ mltrain cluster create configs/p5e-80.yaml --dry-run\n{r.stdout}"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    for action in ("update", "delete", "status"):
        c = Console(record=True, width=200, color_system=None)
        assert cluster_action(action, Path("configs/p5e-80.yaml"), dry_run=True, console=c) == 0
        out.append(f"$ mltrain cluster {action} configs/p5e-80.yaml --dry-run\n{c.export_text()}")
    text = "\n".join(out)
    golden = GOLDEN / "dry-run-p5e-80.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs: review, then UPDATE_GOLDEN=1 to accept"


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_dry_run_writes_nothing(tmp_path):
    """A dry run without --config leaves the working directory as it was (no ./<name>.pcluster.yaml)
    and says the config was rendered and validated, not written."""
    (tmp_path / "configs").mkdir()
    shutil.copy(P5E, tmp_path / "configs" / "p5e-80.yaml")
    before = _files(tmp_path)
    for action in ("create", "update"):
        r = subprocess.run(
            [sys.executable, "-m", "mltrain", "cluster", action, "configs/p5e-80.yaml", "--dry-run"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "PATH": str(tmp_path), "COLUMNS": "200"},
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert _files(tmp_path) == before, f"{action} --dry-run wrote {_files(tmp_path) - before}"
        assert "not written (dry run" in r.stdout and "# wrote" not in r.stdout


def test_dry_run_with_explicit_config_writes_it_and_says_so_first(tmp_path, monkeypatch):
    """`--config FILE --dry-run`: the user asked for the file, so it is written (the validated render, as the
    pcluster golden) and the first line says where."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "out" / "p5e.pcluster.yaml"
    out.parent.mkdir()
    c = _console()
    assert cluster_action("create", P5E, config_path=out, dry_run=True, console=c) == 0
    first = c.export_text().splitlines()[0]
    assert first == f"# wrote {out} (rendered from {P5E} and validated)"
    assert out.read_text() == (ROOT / "tests/golden/pcluster/p5e-80.yaml").read_text().replace(
        "from configs/clusters/p5e-80.yaml", f"from {P5E}"
    )
    assert _files(tmp_path) == {"out", "out/p5e.pcluster.yaml"}


def test_missing_pcluster_is_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "cluster", "create", str(P5E), "--skip-preflight"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PATH": str(tmp_path)},
    )
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3 and "Traceback" not in r.stderr, r.stderr  # one line, soft-wrapped by the terminal
    assert "pipx install aws-parallelcluster==3.16.1" in r.stderr.replace("\n", "") and "Node.js" in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written before the CLI is known to exist


def test_schema_only_pcluster_is_refused(stub, monkeypatch):
    monkeypatch.setenv("STUB_BROKEN", "1")
    with pytest.raises(ClusterError) as e:
        cluster_action("create", P5E, preflight=False, console=_console())
    msg = str(e.value)
    assert "is installed but cannot create clusters" in msg and "No module named 'flask'" in msg
    assert "not on PATH" not in msg and "pipx install aws-parallelcluster==3.16.1" in msg and "\n" not in msg
    assert _calls(stub) == [["version"]]


def test_the_validation_only_install_is_named_not_called_missing(tmp_path):
    """mltrain's own venv has aws-parallelcluster installed with --no-deps (schema validation only): its
    `pcluster` is on PATH but cannot run. The message says what is there, why it cannot create, and the one
    command that installs the full CLI; never "not on PATH"."""
    bindir = Path(sys.executable).parent
    if not (bindir / "pcluster").exists():
        pytest.skip("no validation-only pcluster next to this Python (make venv installs one)")
    probe = subprocess.run([str(bindir / "pcluster"), "version"], capture_output=True, text=True, timeout=120)
    if probe.returncode == 0:
        pytest.skip("the pcluster next to this Python is a full install")
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "cluster", "create", str(P5E), "--skip-preflight"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
        env={**os.environ, "PATH": f"{bindir}{os.pathsep}/usr/bin:/bin", "COLUMNS": "400"},
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    msg = lines[0]
    assert "not on PATH" not in msg
    assert f"{bindir / 'pcluster'} is installed but cannot create clusters" in msg
    assert "aws-parallelcluster 3.16.1 without its runtime dependencies" in msg
    assert "No module named" in msg  # why: pcluster's own import error
    assert "pipx install aws-parallelcluster==3.16.1" in msg
    assert list(tmp_path.iterdir()) == []


def test_a_working_pcluster_later_on_path_is_used(stub, tmp_path, monkeypatch):
    """A broken (validation-only) pcluster earlier on PATH, e.g. an activated venv, does not hide a full install."""
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "pcluster").write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'flask'\" >&2\nexit 1\n")
    (broken / "pcluster").chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken}{os.pathsep}{os.environ['PATH']}")
    assert cluster_action("create", P5E, preflight=False, wait=False, console=_console()) == 0
    assert [c[0] for c in _calls(stub)] == ["version", "create-cluster"]


def test_create_records_exact_argv_and_follows_progress(stub, monkeypatch):
    monkeypatch.setenv("STUB_STATES", "CREATE_IN_PROGRESS,CREATE_IN_PROGRESS,CREATE_COMPLETE")
    c = _console()
    assert cluster_action("create", P5E, preflight=False, poll_s=0, console=c) == 0
    assert _calls(stub) == [
        ["version"],
        [
            "create-cluster",
            "--cluster-name",
            "p5e-80",
            "--cluster-configuration",
            "p5e-80.pcluster.yaml",
            "--region",
            "ap-southeast-3",
        ],
        DESCRIBE,
        DESCRIBE,
        DESCRIBE,
    ]
    text = c.export_text()
    assert "p5e-80: CREATE_IN_PROGRESS" in text and "p5e-80: CREATE_COMPLETE" in text
    assert text.count("CREATE_IN_PROGRESS (stack") == 1  # a line per change, not per poll
    assert "198.51.100.10" in text  # the head node address from the final describe


def test_create_failure_shows_pcluster_reasons(stub, monkeypatch):
    monkeypatch.setenv("STUB_STATES", "CREATE_IN_PROGRESS,CREATE_FAILED")
    with pytest.raises(ClusterError, match="CREATE_FAILED: HeadNodeBootstrapFailure: Cluster creation timed out"):
        cluster_action("create", P5E, preflight=False, poll_s=0, console=_console())


def test_create_refused_by_pcluster_is_one_line(stub, monkeypatch):
    monkeypatch.setenv("STUB_FAIL", "Invalid cluster configuration.")
    with pytest.raises(ClusterError, match="Invalid cluster configuration.; ERROR KeyPairValidator: The key pair"):
        cluster_action("create", P5E, preflight=False, console=_console())


def test_update_delete_status_argv(stub, monkeypatch):
    monkeypatch.setenv("STUB_STATES", "UPDATE_COMPLETE")
    cluster_action("update", P5E, preflight=False, poll_s=0, console=_console())
    assert _calls(stub)[1][:2] == ["update-cluster", "--cluster-name"]
    assert "--cluster-configuration" in _calls(stub)[1]
    stub.unlink()
    monkeypatch.setenv("STUB_STATES", "DELETE_IN_PROGRESS,GONE")
    c = _console()
    cluster_action("delete", P5E, poll_s=0, console=c)
    assert _calls(stub) == [
        ["version"],
        ["delete-cluster", "--cluster-name", "p5e-80", "--region", "ap-southeast-3"],
        DESCRIBE,
        DESCRIBE,
    ]
    assert "p5e-80: deleted" in c.export_text()
    stub.unlink()
    monkeypatch.setenv("STUB_STATES", "CREATE_COMPLETE")
    c = _console()
    cluster_action("status", P5E, console=c)
    assert _calls(stub) == [["version"], DESCRIBE]
    text = c.export_text()
    assert "CREATE_COMPLETE" in text and "RUNNING" in text


def test_no_wait_returns_after_the_call(stub):
    cluster_action("create", P5E, preflight=False, wait=False, console=_console())
    assert [c[0] for c in _calls(stub)] == ["version", "create-cluster"]


# --------------------------------------------------------------------------- preflight gate (moto)


@pytest.fixture(scope="module")
def moto_url():
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_preflight_gates_create(stub, moto_url, tmp_path):
    """A FAIL in preflight stops before `pcluster create-cluster`; once fixed, create runs."""
    import boto3
    import yaml

    s = boto3.Session(aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1")
    ec2 = s.client("ec2", endpoint_url=moto_url)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.0.0/24", AvailabilityZone="us-east-1a")["Subnet"]["SubnetId"]
    ec2.create_key_pair(KeyName="gate-key")  # moto's state is per process: names distinct from other tests
    spec = yaml.safe_load((ROOT / "configs/clusters/g5-8xl-2.yaml").read_text())
    spec["aws"]["subnet_id"] = subnet
    spec["aws"]["ssh_key_name"] = "gate-key"
    spec["aws"]["pyxis_script_url"] = "s3://gate-boot/enable-pyxis.sh"
    path = tmp_path / "g5.yaml"
    path.write_text(yaml.safe_dump(spec))

    class _Moto:
        def client(self, name, **kw):
            return s.client(name, endpoint_url=moto_url, **kw)

    c = _console()
    with pytest.raises(ClusterError, match="preflight failed"):
        cluster_action("create", path, poll_s=0, console=c, session=_Moto())
    assert "s3://gate-boot (aws.pyxis_script_url) does not exist" in c.export_text()
    assert [x[0] for x in _calls(stub)] == ["version"]  # create-cluster was never called
    s3 = s.client("s3", endpoint_url=moto_url)
    s3.create_bucket(Bucket="gate-boot")
    s3.put_object(Bucket="gate-boot", Key="enable-pyxis.sh", Body=b"#!/bin/bash\n")
    assert cluster_action("create", path, poll_s=0, console=_console(), session=_Moto()) == 0
    assert [x[0] for x in _calls(stub)] == ["version", "version", "create-cluster", "describe-cluster"]
