"""Where the pipeline's mltrain commands run: here (the worker is on the cluster's shared file system) or
on the head node over SSH (an Airflow worker on MWAA). Both read and write the run dir's small files."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mltrain.errors import LaunchError
from mltrain.fsutil import atomic_write


class PipelineError(LaunchError):
    """A pipeline step failed; the message is the cause in one line."""


def last_line(p: subprocess.CompletedProcess[str]) -> str:
    """The line that says why a command failed (its last non-empty stderr line, else stdout's)."""
    for text in (p.stderr, p.stdout):
        lines = [x.strip() for x in (text or "").splitlines() if x.strip()]
        if lines:
            return lines[-1]
    return f"exit {p.returncode}"


@dataclass
class LocalRunner:
    """`python -m mltrain ...` in `cwd` with this interpreter."""

    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    remote = False

    def mltrain(self, args: list[str], timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "mltrain", *args]
        return subprocess.run(
            cmd, cwd=self.cwd, capture_output=True, text=True, timeout=timeout_s, env={**os.environ, **self.env}
        )

    def abspath(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.abspath(os.path.join(self.cwd or os.getcwd(), path))

    def read_text(self, path: str) -> str | None:
        try:
            return Path(self.abspath(path)).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_text(self, path: str, text: str) -> None:
        atomic_write(Path(self.abspath(path)), text)

    def exists(self, path: str) -> bool:
        return Path(self.abspath(path)).exists()


SSH_FAILED = 255  # ssh's own exit status: it could not connect, log in or trust the host key


@dataclass
class SshRunner:
    """The same commands on the head node: `ssh host 'cd workdir && env K=V mltrain ...'`.

    When ssh itself fails (exit 255) or a command outlives its timeout, every method raises a PipelineError
    naming the head node: a file that could not be read is never taken for a file that is not there (the
    pipeline would then redo a step, or submit a run that already has a job)."""

    host: str
    user: str | None = None
    port: int = 22
    key_file: str | None = None
    mltrain_cmd: str = "mltrain"
    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    known_hosts: str | None = None
    remote = True

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _ssh(self, remote: str, timeout_s: float | None = None, stdin: str | None = None):
        cmd = ["ssh", "-o", "BatchMode=yes", "-p", str(self.port)]
        if self.key_file:
            cmd += ["-i", self.key_file]
        if self.known_hosts:  # the head node's key pinned in this file (nothing asked, nothing added)
            cmd += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        prefix = f"cd {shlex.quote(self.workdir)} && " if self.workdir else ""
        where = f"the head node {self.target} (port {self.port})"
        try:
            p = subprocess.run(
                [*cmd, self.target, prefix + remote], capture_output=True, text=True, timeout=timeout_s, input=stdin
            )
        except FileNotFoundError:
            raise PipelineError("ssh not found on this worker (pipeline ssh: needs an OpenSSH client)") from None
        except subprocess.TimeoutExpired:
            raise PipelineError(f"a command on {where} did not finish within {timeout_s:.0f} s over SSH") from None
        if p.returncode == SSH_FAILED:
            raise PipelineError(f"cannot run commands on {where} over SSH: {last_line(p)}")
        return p

    def mltrain(self, args: list[str], timeout_s: float | None = None) -> subprocess.CompletedProcess[str]:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return self._ssh((f"env {env} " if env else "") + f"{self.mltrain_cmd} {shlex.join(args)}", timeout_s)

    def abspath(self, path: str) -> str:
        return path if path.startswith("/") or not self.workdir else f"{self.workdir.rstrip('/')}/{path}"

    def read_text(self, path: str) -> str | None:
        p = self._ssh(f"cat {shlex.quote(path)} 2>/dev/null || true", 60)
        return p.stdout if p.returncode == 0 and p.stdout else None

    def write_text(self, path: str, text: str) -> None:
        q = shlex.quote(path)
        p = self._ssh(f"mkdir -p $(dirname {q}) && cat > {q}.tmp && mv -f {q}.tmp {q}", 60, stdin=text)
        if p.returncode != 0:
            raise PipelineError(f"{self.host}:{path}: cannot write: {last_line(p)}")

    def exists(self, path: str) -> bool:
        return self._ssh(f"test -e {shlex.quote(path)}", 60).returncode == 0


Runner = LocalRunner | SshRunner

__all__ = ["LocalRunner", "PipelineError", "Runner", "SshRunner", "last_line"]
