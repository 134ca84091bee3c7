"""The doc-test harness itself: what it extracts from markdown, how it matches shown output, which
commands and options it accepts, and that a failing doc command fails the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer.main

from tests.docs.doc_blocks import DirectiveError, Expect, check_flags, match_output, mltrain_invocations, parse
from tests.docs.runner import DocRun


def _parse(tmp_path: Path, text: str):
    p = tmp_path / "doc.md"
    p.write_text(text)
    return parse(p)


def test_shell_blocks_and_their_directives(tmp_path):
    blocks = _parse(
        tmp_path,
        """# t
```yaml
a: 1
```

<!-- doc-test: s3 -->
<!-- doc-test: append "mltrain train" --set train.max_steps=2 -->
<!-- doc-test: setup
touch x
-->
```bash
mltrain data upload d s3://b/p \\
    --concurrency 2   # comment
# only a comment
mltrain train c.yaml
```

```
mltrain status
```

<!-- doc-test: expect numbers=any -->
```text
run 1
```

```python
print(1)
```
""",
    )
    assert [b.kind for b in blocks] == ["s3", "run"]
    first, second = blocks
    assert first.commands() == [
        "mltrain data upload d s3://b/p      --concurrency 2   # comment",
        "mltrain train c.yaml",
    ]
    assert first.appends == [(["mltrain", "train"], ["--set", "train.max_steps=2"])]
    assert first.setup.strip() == "touch x"
    assert second.expects[0].lines == ["run 1"] and second.expects[0].numbers_any


def test_dollar_transcript_commands_and_shown_output(tmp_path):
    (b,) = _parse(
        tmp_path,
        '<!-- doc-test: expect -->\n```\n$ mltrain plan f.yaml \\\n  --json\n{\n  "a": 1\n}\n```\n',
    )
    assert b.commands() == ["mltrain plan f.yaml    --json"]
    assert b.expects[0].lines == ["{", '  "a": 1', "}"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- doc-test: skip -->\n```bash\nls\n```\n", "needs reason=WHY"),
        ("<!-- doc-test: bogus -->\n```bash\nls\n```\n", "unknown doc-test directive"),
        ("<!-- doc-test: aws -->\n\nsome prose\n```bash\nls\n```\n", "right before a fenced block"),
        ("<!-- doc-test: aws -->\n<!-- doc-test: gpu -->\n```bash\nls\n```\n", "two kinds"),
        ("<!-- doc-test: expect -->\n```text\nx\n```\n", "no shell block before it"),
        ("<!-- doc-test: rc=0,1 -->\n```bash\nls\n```\n", "2 statuses for 1 commands"),
        ("```bash\nls\n```\n<!-- doc-test: expect lines=3 -->\n```text\nx\n```\n", "the block has 1 lines"),
        ("<!-- doc-test: setup\nls\n", "never closed"),
    ],
)
def test_bad_directives_are_errors_naming_the_place(tmp_path, text, message):
    with pytest.raises(DirectiveError, match=message):
        _parse(tmp_path, text)


def test_key_lines_match_in_order_through_wrapping_and_elisions():
    out = "header 12:00\nmodel  nodes  days\nqwen   8      10.58 and a long line the\nterminal wrapped\nfleet 80\n"
    assert (
        match_output(Expect(["model nodes days", "qwen 8 10.58 ... line the terminal wrapped", "fleet 80"]), out)
        is None
    )
    assert match_output(Expect(["...", "header 12:00", "...", "fleet 80"]), out) is None
    miss = match_output(Expect(["fleet 80", "model nodes days"]), out)  # order matters
    assert miss is not None and "model nodes days" in miss
    assert match_output(Expect(["qwen 8 10.59"]), out) is not None  # numbers exact by default
    assert match_output(Expect(["header 9:30", "qwen 9 11.00"], numbers_any=True), out) is None
    assert match_output(Expect(["fleet 81 x"], numbers_any=True), out) is not None  # only numbers vary


@pytest.fixture(scope="module")
def cli():
    from mltrain.cli import app

    return typer.main.get_command(app)


@pytest.mark.parametrize(
    "args, bad",
    [
        (["plan", "configs/fleets/seven-models.yaml", "--set", "a=1", "--json"], None),  # the hidden default
        (["plan", "simulate", "F.yaml", "--runs", "5", "--seed=7"], None),
        (["data", "upload", "d", "s3://b", "--concurrency", "--weird"], None),  # a value, not an option
        (["train", "c.yaml", "--", "--not-ours"], None),  # after --: the script's
        (["train", "c.yaml", "--nprocs", "2"], "has no option --nprocs"),
        (["data", "distill", "c.yaml"], "has no subcommand 'distill'"),
        (["cluster"], "needs a subcommand"),
        (["fleet", "status", "F.yaml", "--watch", "60", "--png", "x.png", "--colour"], "has no option --colour"),
    ],
)
def test_check_flags_walks_the_command_tree(cli, args, bad):
    why = check_flags(cli, args)
    assert (why is None) if bad is None else (why is not None and bad in why), why


def test_mltrain_invocations_only_where_mltrain_runs():
    assert mltrain_invocations("aws ecr create-repository --repository-name mltrain --region x") == []
    assert mltrain_invocations("kubectl get cm -n mltrain x | sh") == []
    assert mltrain_invocations("srun --nodes=16 --ntasks-per-node=1 mltrain doctor") == [["doctor"]]
    assert mltrain_invocations("torchrun --nnodes=2 -m mltrain bench collectives --json  # x") == [
        ["bench", "collectives", "--json"]
    ]
    assert mltrain_invocations("mltrain status a && mltrain logs a -f") == [["status", "a"], ["logs", "a", "-f"]]


def _doc(tmp_path: Path, text: str) -> tuple[DocRun, list]:
    blocks = _parse(tmp_path, text)
    return DocRun.create(tmp_path / "work"), blocks


def test_a_failing_command_fails_naming_the_doc_line_and_output(tmp_path):
    doc, (b,) = _doc(tmp_path, "text\n\n```bash\necho fine\nmltrain plan no-such-fleet.yaml\n```\n")
    with pytest.raises(
        AssertionError,
        match=r"doc\.md:3: `mltrain plan no-such-fleet.yaml` exited 2, expected 0:\nerror: no-such-fleet.yaml: file not found",
    ):
        doc.run(b)


def test_rc_setup_append_and_state_between_blocks(tmp_path):
    doc, blocks = _doc(
        tmp_path,
        """<!-- doc-test: setup
printf 'x' > made-by-setup
-->
<!-- doc-test: rc=0,3 -->
```bash
export GREETING=hi
bash -c 'test -f made-by-setup && exit 3'
```

<!-- doc-test: append "mltrain plan checkpoint-interval" --mtbf-h 0.25 -->
```bash
mltrain plan checkpoint-interval --save-s 300 --mtbf-h 400
echo "$GREETING"
```
""",
    )
    doc.run(blocks[0])
    plan, echo = doc.run(blocks[1])
    assert "0.25 h MTBF" in plan.output  # the appended option is the one that counts
    assert echo.output.strip() == "hi"  # exported in the block before


def test_an_append_that_matches_nothing_is_an_error(tmp_path):
    doc, (b,) = _doc(tmp_path, '<!-- doc-test: append "mltrain train" --nproc 1 -->\n```bash\necho x\n```\n')
    with pytest.raises(AssertionError, match="matched no command"):
        doc.run(b)
