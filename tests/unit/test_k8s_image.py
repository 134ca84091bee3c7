"""docker/Dockerfile and scripts/enroot-import.sh: no image can be built or pulled here (no base images,
no enroot package), so the Dockerfile is parsed (dockerfile-parse) and every RUN body plus the import
script are checked with the real `shellcheck`; the import script then runs against stand-ins for
`enroot` and `aws` (the only mocks, since neither can run here) to check the ECR login, the enroot URI
and the atomic move.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SCRIPT = ROOT / "scripts" / "enroot-import.sh"


@pytest.fixture(scope="module")
def shellcheck() -> str:
    """The Debian package `shellcheck`; installed with apt-get when missing and we are root (as CI is)."""
    path = shutil.which("shellcheck")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "shellcheck"], check=False, env=env, timeout=600)
        path = shutil.which("shellcheck")
    if path is None:
        pytest.skip("shellcheck is not installed and cannot be installed (not root or no apt-get)")
    return path


def _instructions() -> list[dict]:
    from dockerfile_parse import DockerfileParser

    return [i for i in DockerfileParser(path=str(DOCKERFILE)).structure if i["instruction"] != "COMMENT"]


def test_dockerfile_structure() -> None:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(path=str(DOCKERFILE))
    ins = _instructions()
    kinds = [i["instruction"] for i in ins]
    assert kinds[0] == "ARG" and ins[0]["value"].startswith("BASE_IMAGE=")
    assert kinds.index("FROM") == 1 and ins[1]["value"] == "${BASE_IMAGE}"
    assert kinds.count("FROM") == 1
    assert parser.baseimage == "nvcr.io/nvidia/pytorch:25.09-py3"  # the ARG default
    dlc = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312-cu129-ubuntu22.04-ec2"
    assert DockerfileParser(path=str(DOCKERFILE), build_args={"BASE_IMAGE": dlc}).baseimage == dlc
    shell = next(i for i in ins if i["instruction"] == "SHELL")
    assert "pipefail" in shell["value"]
    args = {i["value"].split("=", 1)[0] for i in ins if i["instruction"] == "ARG"}
    assert {"BASE_IMAGE", "EFA_INSTALLER_VERSION", "NCCL_VERSION", "AWS_OFI_NCCL_VERSION"} <= args
    runs = "\n".join(i["value"] for i in ins if i["instruction"] == "RUN")
    assert "efa_installer.sh" in runs and "--skip-kmod" in runs
    assert "NVIDIA/nccl" in runs and "aws/aws-ofi-nccl" in runs and "--with-libfabric=/opt/amazon/efa" in runs
    assert 'pip install --no-cache-dir --constraint /tmp/torch-pin.txt ".[k8s,hf,parquet,s3]"' in runs
    copies = [i["value"] for i in ins if i["instruction"] == "COPY"]
    assert "src ./src" in copies
    env = next(i["value"] for i in ins if i["instruction"] == "ENV")
    assert "/opt/aws-ofi-nccl/lib" in env and "/opt/nccl/lib" in env
    # every instruction is one the builder knows
    known = {"FROM", "ARG", "RUN", "ENV", "COPY", "WORKDIR", "SHELL", "CMD", "ENTRYPOINT", "LABEL", "USER", "COMMENT"}
    assert set(kinds) <= known, set(kinds) - known
    # the image's pip install keeps the base's torch: the constraint file pins it
    assert "torch=={torch.__version__}" in runs


def test_dockerfile_run_steps_pass_shellcheck(shellcheck: str, tmp_path: Path) -> None:
    """Each RUN body as the build runs it (bash -o pipefail -c), with the ARGs it uses defined."""
    ins = _instructions()
    args = [i["value"].split("=", 1)[0] for i in ins if i["instruction"] == "ARG"]
    runs = [i for i in ins if i["instruction"] == "RUN"]
    assert len(runs) >= 4
    for i, run in enumerate(runs):
        script = tmp_path / f"run{i}.sh"
        header = "#!/bin/bash\nset -o pipefail\n" + "".join(f': "${{{a}:?}}"\n' for a in args)
        script.write_text(header + run["value"] + "\n")
        p = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True)
        assert p.returncode == 0, f"Dockerfile line {run['startline'] + 1}:\n{p.stdout}"


def test_enroot_import_passes_shellcheck(shellcheck: str) -> None:
    p = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout
    assert os.access(SCRIPT, os.X_OK)


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _run(tmp_path: Path, *args: str, enroot_fails: bool = False) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    # enroot stand-in: records its args, refuses to overwrite (as enroot does), writes a fake image
    _stub(
        bin_dir,
        "enroot",
        f'echo "$@" >> {tmp_path}/enroot.calls\n'
        '[ "$1" = import ] && [ "$2" = --output ] || exit 2\n'
        '[ -e "$3" ] && { echo "file exists" >&2; exit 1; }\n'
        + (
            'echo "pull failed" >&2; head -c 100 /dev/zero > "$3"; exit 1\n'
            if enroot_fails
            else 'echo "sqsh of $4" > "$3"\n'
        ),
    )
    _stub(bin_dir, "aws", f'echo "$@" >> {tmp_path}/aws.calls\necho ECRTOKEN123\n')
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ENROOT_IMAGE_DIR": str(tmp_path / "images"),
        "ENROOT_CONFIG_PATH": str(tmp_path / "enroot-conf"),
    }
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_enroot_import_ecr(tmp_path: Path) -> None:
    image = "123456789012.dkr.ecr.us-west-2.amazonaws.com/mltrain:0.1.0"
    p = _run(tmp_path, image, "mltrain-0.1.0")
    assert p.returncode == 0, p.stderr
    out = tmp_path / "images" / "mltrain-0.1.0.sqsh"
    assert p.stdout.strip().splitlines()[-1] == str(out)
    assert out.read_text().strip() == "sqsh of docker://123456789012.dkr.ecr.us-west-2.amazonaws.com#mltrain:0.1.0"
    assert (tmp_path / "aws.calls").read_text().split() == ["ecr", "get-login-password", "--region", "us-west-2"]
    creds = tmp_path / "enroot-conf" / ".credentials"
    assert creds.read_text() == "machine 123456789012.dkr.ecr.us-west-2.amazonaws.com login AWS password ECRTOKEN123\n"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    # a second import (new tag) replaces the file; the credentials keep one line per registry
    p = _run(tmp_path, image.replace("0.1.0", "0.1.1"), "mltrain-0.1.0")
    assert p.returncode == 0, p.stderr
    assert "mltrain:0.1.1" in out.read_text()
    assert len(creds.read_text().splitlines()) == 1
    assert sorted(x.name for x in (tmp_path / "images").iterdir()) == ["mltrain-0.1.0.sqsh"]  # no temp files left


def test_enroot_import_failure_keeps_the_previous_image(tmp_path: Path) -> None:
    assert _run(tmp_path, "nvcr.io/nvidia/pytorch:25.09-py3", "pt").returncode == 0
    good = (tmp_path / "images" / "pt.sqsh").read_text()
    assert good.strip() == "sqsh of docker://nvcr.io#nvidia/pytorch:25.09-py3"
    assert not (tmp_path / "aws.calls").exists()  # not ECR: no login
    p = _run(tmp_path, "nvcr.io/nvidia/pytorch:25.10-py3", "pt", enroot_fails=True)
    assert p.returncode == 1 and "is unchanged" in p.stderr and p.stdout == ""
    assert (tmp_path / "images" / "pt.sqsh").read_text() == good
    assert sorted(x.name for x in (tmp_path / "images").iterdir()) == ["pt.sqsh"]


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["only-one"], "usage:"),
        (["/fsx/images/x.sqsh", "x"], "not a registry reference"),
        (["ubuntu:22.04", "bad/name"], "NAME 'bad/name'"),
    ],
)
def test_enroot_import_bad_input(tmp_path: Path, args: list[str], msg: str) -> None:
    p = _run(tmp_path, *args)
    assert p.returncode == 1 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1
