"""Every shell block of README.md, docs/*.md and docs/ko/*.md: run in order, one work directory per doc
(docs/testing.md, "Tested docs"). Blocks marked aws or gpu are checked for shell syntax and for the
subcommands and options the CLI accepts; blocks marked slurm or spark run in those test streams. A Korean page
whose runnable blocks are those of its English twin, byte for byte (tests/unit/test_docs_ko.py holds every
page to that), is not run a second time: its twin's run covers the same commands and outputs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.docs.doc_blocks import (
    ROOT,
    Block,
    DirectiveError,
    check_flags,
    doc_files,
    match_output,
    mltrain_invocations,
    parse,
)
from tests.docs.runner import DocRun

# The skips the docs may carry: a new one is a deliberate change here, so they stay few and explained.
MAX_SKIPS = 8
MAX_PENDING = 4


def _parse_all() -> tuple[dict[Path, list[Block]], list[str]]:
    docs, errors = {}, []
    for p in doc_files():
        try:
            docs[p] = parse(p)
        except DirectiveError as e:
            errors.append(str(e))
    return docs, errors


DOCS, DIRECTIVE_ERRORS = _parse_all()


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def _same_as_english_twin(path: Path) -> bool:
    """A docs/ko page (or README.ko.md) whose runnable blocks, with their directives and expected outputs,
    equal its English twin's."""
    if path.parent.name == "ko":
        twin = path.parent.parent / path.name
    elif path.name.endswith(".ko.md"):
        twin = path.with_name(path.name.replace(".ko.md", ".md"))
    else:
        return False

    def key(blocks: list[Block]) -> list[tuple]:
        return [
            (b.kind, b.text, b.setup, b.appends, b.fixtures, b.env, b.rc, [(e.lines, e.numbers_any) for e in b.expects])
            for b in blocks
            if b.runs
        ]

    return twin in DOCS and key(DOCS[path]) == key(DOCS[twin])


OWN_DOCS = {p: blocks for p, blocks in DOCS.items() if not _same_as_english_twin(p)}
RUN_DOCS = [p for p, blocks in OWN_DOCS.items() if any(b.kind in ("run", "s3") for b in blocks)]
SLURM_DOCS = [p for p, blocks in OWN_DOCS.items() if any(b.kind == "slurm" for b in blocks)]
SPARK_DOCS = [p for p, blocks in OWN_DOCS.items() if any(b.kind == "spark" for b in blocks)]


def _s3_env(request: pytest.FixtureRequest, blocks: list[Block]) -> dict[str, str]:
    if not any(b.kind == "s3" for b in blocks):
        return {}
    endpoint = request.getfixturevalue("moto_s3")
    # each doc starts from an empty S3 (its shown output says "created", not "exists"): moto's reset API;
    # the doc tests' server is their own (tests/docs/conftest.py), so no other test's buckets go with it
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).read()
    from tests.docs.conftest import DUMMY_ENV

    return {
        **DUMMY_ENV,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def _make_buckets(block: Block, env: dict[str, str]) -> None:
    """The buckets a block names in s3:// URLs, made on the local server (what `aws s3 mb` did before)."""
    import boto3

    names = {urllib.parse.urlparse(u).netloc for u in re.findall(r"s3://[a-z0-9.\-]+", block.text)}
    s3 = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    for name in sorted(names):
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass


def _run_doc(doc: DocRun, blocks: list[Block]) -> None:
    for block in blocks:
        if block.kind == "s3":
            _make_buckets(block, doc.env)
        results = doc.run(block)
        output = "\n".join(r.output for r in results)
        for expect in block.expects:
            problem = match_output(expect, output)
            assert problem is None, (
                f"{block.where}: output (expect at line {expect.line_no}): {problem}\n{output[-3000:]}"
            )


@pytest.mark.parametrize("path", RUN_DOCS, ids=_ids(RUN_DOCS))
def test_doc_runs(path: Path, tmp_path: Path, request: pytest.FixtureRequest, doc_fixture_dir) -> None:
    """The doc's blocks (unmarked and s3) in order, in one work directory; output checked where marked."""
    blocks = [b for b in DOCS[path] if b.kind in ("run", "s3")]
    doc = DocRun.create(tmp_path / "work", _s3_env(request, blocks))
    doc.fixture_dir = doc_fixture_dir
    _run_doc(doc, blocks)


@pytest.mark.slurm
@pytest.mark.parametrize("path", SLURM_DOCS, ids=_ids(SLURM_DOCS))
def test_doc_slurm(path: Path, tmp_path: Path, local_slurm: Path, doc_fixture_dir) -> None:
    """The doc's slurm blocks in order, in their own work directory, against the local cluster; the runs
    they submitted are cancelled at the end (they would hold the shared cluster otherwise)."""
    blocks = [b for b in DOCS[path] if b.kind == "slurm"]
    doc = DocRun.create(tmp_path / "work", {"SLURM_CONF": str(local_slurm)})
    doc.fixture_dir = doc_fixture_dir
    try:
        _run_doc(doc, blocks)
    finally:
        for run in sorted((doc.workdir / "runs").glob("*/")):
            subprocess.run(
                ["bash", "-c", f"mltrain cancel {shlex.quote(str(run))}"],
                cwd=doc.workdir,
                env=doc.env,
                capture_output=True,
                timeout=60,
            )


@pytest.mark.spark
@pytest.mark.parametrize("path", SPARK_DOCS, ids=_ids(SPARK_DOCS))
def test_doc_spark(path: Path, tmp_path: Path, doc_fixture_dir) -> None:
    """The doc's spark blocks in order, in their own work directory: in the Spark stream with the Spark tests,
    so no xdist worker starts a Spark JVM of its own."""
    doc = DocRun.create(tmp_path / "work", {})
    doc.fixture_dir = doc_fixture_dir
    # the JVM settings of the Spark tests (tests/integration/spark_fixture.py), through spark-defaults.conf so
    # the doc's commands stay as a user types them
    from tests.integration.spark_fixture import JVM_TEST_OPTS

    conf_dir = tmp_path / "spark-conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        f"spark.driver.extraJavaOptions {JVM_TEST_OPTS}\nspark.executor.extraJavaOptions {JVM_TEST_OPTS}\n"
    )
    doc.env["SPARK_CONF_DIR"] = str(conf_dir)
    _run_doc(doc, [b for b in DOCS[path] if b.kind == "spark"])


def test_korean_twins_that_are_not_run_again_have_identical_blocks() -> None:
    """The pages left out of the runs above are exactly those whose blocks equal their twin's; a Korean page
    with a block of its own still runs."""
    left_out = sorted(set(DOCS) - set(OWN_DOCS))
    assert all(p.parent.name == "ko" or p.name.endswith(".ko.md") for p in left_out), left_out
    for p in left_out:
        assert _same_as_english_twin(p)


def test_doc_directives_read() -> None:
    """Every doc-test comment in the docs is one the harness understands (a doc with a bad one runs no block)."""
    assert not DIRECTIVE_ERRORS, "\n".join(DIRECTIVE_ERRORS)


ALL_BLOCKS = [b for blocks in DOCS.values() for b in blocks]


def test_doc_commands_exist() -> None:
    """Every block (skipped ones too, except `skip reason=pending...`): valid shell (`bash -n`), and each `mltrain ...` in it names an existing
    subcommand and only options that command takes (the blocks that run would fail too, but later)."""
    import typer.main

    from mltrain.cli import app

    command = typer.main.get_command(app)
    problems = []
    for b in ALL_BLOCKS:
        if b.kind == "skip" and b.reason.startswith("pending"):
            continue  # a command still being built: checked once its marker is taken off
        script = "\n".join(b.commands())
        p = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        if p.returncode != 0:
            problems.append(f"{b.where}: bash -n: {p.stderr.strip()}")
        for line in b.commands():
            for args in mltrain_invocations(line):
                why = check_flags(command, args)
                if why:
                    problems.append(f"{b.where}: `mltrain {' '.join(args)}`: {why}")
    assert not problems, "\n".join(problems)


def test_doc_skips_are_few() -> None:
    """The skipped blocks, each with its reason (printed with -s). At most MAX_SKIPS per language (the English
    docs, docs/ko) that are not `pending`, and MAX_PENDING pending ones (a command still being built)."""
    skips = [b for b in ALL_BLOCKS if b.kind == "skip"]
    for b in skips:
        print(f"{b.where}: skip: {b.reason}")
    assert all(b.reason for b in skips)
    for lang in ("en", "ko"):
        mine = [b for b in skips if (b.path.parent.name == "ko") == (lang == "ko")]
        pending = [b for b in mine if b.reason.startswith("pending")]
        others = [b for b in mine if not b.reason.startswith("pending")]
        assert len(others) <= MAX_SKIPS, f"{lang}: {len(others)} skips:\n" + "\n".join(
            f"{b.where}: {b.reason}" for b in others
        )
        assert len(pending) <= MAX_PENDING, f"{lang}: {len(pending)} pending:\n" + "\n".join(b.where for b in pending)
