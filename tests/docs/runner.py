"""Runs the docs' shell blocks: one work directory per doc file, the blocks in order, each command line as
the reader would type it.

A plain `mltrain ...` line (no pipes, redirections or `$`) runs in this process through the CLI's own
entry (`run_app`: the same parsing, one-line errors and exit codes) to save a second of imports per
command; `mltrain train` runs as a subprocess (it starts torchrun, installs signal handlers and may
re-exec itself); every other line runs under `bash -c` with an `mltrain` shim first on PATH.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.docs.doc_blocks import ROOT, Block, mltrain_invocations

COPIED = ("configs", "examples")  # copied: a command may write beside a config
LINKED = ("scripts", "bench", "docker", "dashboards")  # read only
SHELL_CHARS = re.compile(r"[|&;<>()$`*?]")
SUBPROCESS_COMMANDS = {"train"}
TIMEOUT_S = 300


# Runs several docs start from, each made once per test session by the commands the docs show (fewer
# steps) and copied into a doc's work directory by `<!-- doc-test: fixture NAME -->`: (commands, paths).
SHORT_RUN = "--set train.max_steps=2 --set train.warmup_steps=1 --set train.eval_every=0 --set checkpoint.every_steps=1"
FIXTURES: dict[str, tuple[list[str], list[str]]] = {
    "demo": (
        ["mltrain data prepare configs/demo.yaml", f"mltrain train configs/demo.yaml {SHORT_RUN}"],
        ["data/demo", "runs/demo"],
    ),
    "shakespeare-char": (
        [
            "python scripts/shakespeare_char_data.py",
            "mltrain data prepare configs/shakespeare-char.yaml",
            f"mltrain train configs/shakespeare-char.yaml {SHORT_RUN}",
        ],
        ["data/shakespeare-char", "runs/shakespeare-char"],
    ),
}


def build_fixture(name: str, cache: Path) -> Path:
    """The work directory holding fixture NAME, built under `cache` unless it is there already (the caller
    holds a lock: pytest-xdist workers share the cache)."""
    done = cache / name / ".done"
    if not done.exists():
        shutil.rmtree(cache / name, ignore_errors=True)
        doc = DocRun.create(cache / name)
        for command in FIXTURES[name][0]:
            r = doc._bash(command)
            if r.rc != 0:
                raise AssertionError(f"doc-test fixture {name}: `{command}` exited {r.rc}:\n{r.output[-3000:]}")
        done.touch()
    return cache / name


@dataclass
class Result:
    command: str
    rc: int
    output: str
    seconds: float = 0.0


@dataclass
class DocRun:
    """A doc file's work directory and environment; `run(block)` runs its setup and commands in order."""

    workdir: Path
    env: dict[str, str]
    results: list[Result] = field(default_factory=list)
    fixture_dir: Callable[[str], Path] | None = None  # name -> a built fixture's work directory

    @classmethod
    def create(cls, workdir: Path, extra_env: dict[str, str] | None = None) -> DocRun:
        workdir.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            shutil.copytree(ROOT / name, workdir / name, dirs_exist_ok=True)
        for name in LINKED:
            if not (workdir / name).exists():
                (workdir / name).symlink_to(ROOT / name)
        shim = workdir / ".bin"
        shim.mkdir(exist_ok=True)
        # scripts, not links: a link to the venv's python would start it outside the venv
        for name, body in (
            ("mltrain", f'exec "{sys.executable}" -m mltrain "$@"'),
            ("python", f'exec "{sys.executable}" "$@"'),
        ):
            (shim / name).write_text(f"#!/bin/sh\n{body}\n")
            (shim / name).chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLTRAIN_", "PYTEST_"))}
        env.update(
            PATH=f"{shim}:{env.get('PATH', '/usr/bin:/bin')}",
            PYTHONPATH=os.pathsep.join(p for p in [str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")] if p),
            COLUMNS="80",
            OMP_NUM_THREADS="1",
            **(extra_env or {}),
        )
        return cls(workdir=workdir, env=env)

    def run(self, block: Block) -> list[Result]:
        """Run one block; raises AssertionError naming the block, the command and its output on a failure."""
        saved = dict(self.env)
        self.env.update(block.env)
        try:
            return self._run(block)
        finally:
            kept = {k: v for k, v in self.env.items() if k not in block.env}  # `export` lines stay
            self.env = {**saved, **kept}

    def _run(self, block: Block) -> list[Result]:
        for name in block.fixtures:
            if name not in FIXTURES:
                raise AssertionError(f"{block.where}: no doc-test fixture {name!r} (there are {sorted(FIXTURES)})")
            assert self.fixture_dir is not None, "DocRun.fixture_dir is not set"
            src = self.fixture_dir(name)
            for rel in FIXTURES[name][1]:
                if not (self.workdir / rel).exists():
                    shutil.copytree(src / rel, self.workdir / rel, symlinks=True)
        if block.setup.strip():
            r = self._bash(block.setup)
            _check(block, r, 0, "setup")
        results = []
        commands = block.commands()
        used = [False] * len(block.appends)
        for k, command in enumerate(commands):
            t0 = time.monotonic()
            r = self.run_command(command, block, used)
            r.seconds = time.monotonic() - t0
            print(f"{block.where}: {r.seconds:5.1f} s  rc {r.rc}  {command}")
            results.append(r)
            want = block.rc[k] if block.rc else 0
            _check(block, r, want, "")
        unused = [" ".join(p) for (p, _), u in zip(block.appends, used, strict=True) if not u]
        if unused:
            raise AssertionError(f"{block.where}: doc-test append for {unused} matched no command of the block")
        self.results.extend(results)
        return results

    def run_command(self, command: str, block: Block, used: list[bool]) -> Result:
        simple = not SHELL_CHARS.search(strip_comment(command))
        words = shlex.split(command, comments=True) if simple else []
        if not simple:
            if any(["mltrain", *inv][: len(p)] == p for p, _ in block.appends for inv in mltrain_invocations(command)):
                raise AssertionError(f"{block.where}: doc-test append cannot change a shell line: {command}")
            return self._bash(command)
        if words and words[0] == "export" and all("=" in w for w in words[1:]):
            for w in words[1:]:
                k, _, v = w.partition("=")
                self.env[k] = v
            return Result(command, 0, "")
        for i, (prefix, extra) in enumerate(block.appends):
            if words[: len(prefix)] == prefix:
                used[i] = True
                cut = words.index("--") if "--" in words else len(words)
                words = [*words[:cut], *extra, *words[cut:]]
        if words and words[0] == "mltrain" and words[1:2] and words[1] not in SUBPROCESS_COMMANDS:
            return self._in_process(words[1:], command)
        return self._bash(shlex.join(words), shown=command)

    def _bash(self, script: str, shown: str | None = None) -> Result:
        try:
            p = subprocess.run(
                ["bash", "-c", script],
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                timeout=TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as e:
            out = e.stdout if isinstance(e.stdout, str) else (e.stdout or b"").decode(errors="replace")
            return Result(shown or script, 124, out + f"\n(timed out after {TIMEOUT_S} s)")
        return Result(shown or script, p.returncode, p.stdout)

    def _in_process(self, args: list[str], shown: str) -> Result:
        from mltrain.cli import app
        from mltrain.cli.common import run_app

        buf = io.StringIO()
        saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
        os.environ.clear()
        os.environ.update(self.env)
        sys.argv = ["mltrain", *args]
        os.chdir(self.workdir)
        rc = 0
        try:
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                run_app(app)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
            sys.argv = saved_argv
        return Result(shown, rc, buf.getvalue())


def strip_comment(command: str) -> str:
    """The command without its trailing `# ...` comment (a `#` outside quotes, after a space)."""
    quote = ""
    for i, ch in enumerate(command):
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or command[i - 1].isspace()):
            return command[:i].rstrip()
    return command


def _check(block: Block, r: Result, want: int, what: str) -> None:
    if r.rc != want:
        tail = "\n".join(r.output.splitlines()[-30:])
        raise AssertionError(
            f"{block.where}: {what + ' ' if what else ''}`{r.command}` exited {r.rc}, expected {want}:\n{tail}"
        )
