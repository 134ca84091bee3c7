"""Day-one CLI details: help texts that are true and examples that run."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from mltrain.cli import app
from mltrain.cli.plan import PLAN_SET_EXAMPLE

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mltrain", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


@pytest.mark.parametrize("cmd", [[], ["plan"], ["export"], ["train"], ["submit"], ["status"], ["logs"]])
def test_help_has_no_bool_type_labels(cmd):
    """A flag's help shows no value placeholder (`--json`, not `--json <bool>`)."""
    r = _run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "<bool>" not in r.stdout, r.stdout


def test_help_promises_kubernetes_only_with_the_k8s_command():
    """--help mentions Kubernetes only when a command runs on it (`k8s render`)."""
    r = _run("--help")
    text = " ".join(r.stdout.split())
    if "Kubernetes" in text:
        assert _run("k8s", "render", "--help").returncode == 0


def test_plan_help_set_example_runs_on_the_shipped_fleet():
    """The `--set` example in plan --help is a key a fleet file takes, and runs on the shipped fleet."""
    help_text = " ".join(_run("plan", "--help").stdout.replace("\u2502", " ").split())  # without the box
    m = re.search(r"e\.g\. --set (\S+)", help_text)
    assert m and m.group(1) == PLAN_SET_EXAMPLE, help_text
    r = _run("plan", "configs/fleets/seven-models.yaml", "--set", PLAN_SET_EXAMPLE, "--json")
    assert r.returncode == 0, r.stderr


def _readme_commands(prefix: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith(prefix):
                cmds.append(line)
    return cmds


def test_every_readme_plan_example_runs():
    """Every `mltrain plan` command in the README runs and exits 0 (no infeasible example)."""
    cmds = _readme_commands("mltrain plan ")
    assert len(cmds) >= 2
    for cmd in cmds:
        r = _run(*shlex.split(cmd)[1:])
        assert r.returncode == 0, (cmd, r.stderr)


def test_export_takes_o_like_cluster_render():
    cmd = typer.main.get_command(app)
    export = cmd.commands["export"]  # type: ignore[attr-defined]
    (out,) = [p for p in export.params if p.name == "hf"]
    assert {"-o", "--out", "--hf"} <= set(out.opts)
    render = cmd.commands["cluster"].commands["render"]  # type: ignore[attr-defined]
    assert {"-o", "--out"} <= set(next(p for p in render.params if p.name == "out").opts)


def test_pyproject_license_is_an_spdx_string():
    """The license is an SPDX string with setuptools >= 77: `license = {text = ...}` prints setuptools'
    deprecation box at every install."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(data["project"]["license"], str)
    floor = [r for r in data["build-system"]["requires"] if r.startswith("setuptools")]
    assert floor and re.search(r">=\s*(\d+)", floor[0]) and int(re.search(r">=\s*(\d+)", floor[0]).group(1)) >= 77


def _visible_commands(group, path: list[str]):
    """(path, command) of every visible leaf command under a typer group (typer's own click: duck-typed)."""
    ctx = type(group).context_class(group)
    for name in group.list_commands(ctx):  # the sub-apps load lazily: ask the group, not its dict
        sub = group.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        if hasattr(sub, "list_commands"):
            yield from _visible_commands(sub, [*path, name])
        else:
            yield [*path, name], sub


def test_every_command_and_option_says_what_it_does():
    """`--help` is what people paste into a search: no command without a summary, no option without help."""
    missing = []
    for path, cmd in _visible_commands(typer.main.get_command(app), ["mltrain"]):
        if not (cmd.help or cmd.short_help):
            missing.append(" ".join(path))
        missing += [
            f"{' '.join(path)} {p.opts[0]}"
            for p in cmd.params
            if p.param_type_name == "option" and not getattr(p, "hidden", False) and not p.help
        ]
    assert len(list(_visible_commands(typer.main.get_command(app), []))) > 40
    assert not missing, missing
