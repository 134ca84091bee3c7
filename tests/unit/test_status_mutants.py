"""The small pieces `mltrain status` is built from, each pinned exactly: the error line it shows for a
failed run, the lease check, the node lists, the line wrapping, the straggler line and the --json shape.
A wrong word or a lost column here is what an operator reads at 3 a.m., so every branch is asserted
with the exact text (bench/mutate.py runs these against launch/status.py's mutants)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mltrain.launch import status
from mltrain.launch.status import RunStatus, compress_nodes, status_json, straggler_line, wrap_line


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "r"
    (run / "control").mkdir(parents=True)
    (run / "slurm").mkdir()
    return run


# ------------------------------------------------------------------ _error_line


def test_error_line_is_the_first_line_of_the_exit_message(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (run / "control" / "exit_message").write_text("\n  data.dir: no manifest\nsecond line\n")
    (run / "slurm" / "7.err").write_text("error: from the job's stderr\n")
    assert status._error_line(run, "7") == "data.dir: no manifest"


@pytest.mark.parametrize("message", [None, "", "\n\n"])
def test_error_line_falls_back_to_the_jobs_stderr_error_line(tmp_path: Path, message: str | None) -> None:
    run = _run(tmp_path)
    if message is not None:
        (run / "control" / "exit_message").write_text(message)
    (run / "slurm" / "7.err").write_text(
        "Traceback: noise\n  mistake: not an error line\n   error:   model.dim: must be even  \nerror: second\n"
    )
    assert status._error_line(run, "7") == "model.dim: must be even"


def test_error_line_without_a_job_or_its_stderr_is_none(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (run / "slurm" / "7.err").write_text("error: of job 7\n")
    assert status._error_line(run, None) is None
    assert status._error_line(run, "8") is None  # no 8.err
    (run / "slurm" / "9.err").write_text("no error line here\n")
    assert status._error_line(run, "9") is None


def test_error_line_reads_a_stderr_with_bad_bytes(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (run / "slurm" / "7.err").write_bytes(b"\xff\xfe garbage\nerror: bad \xff byte\n")
    assert status._error_line(run, "7") == "bad \ufffd byte"


# ------------------------------------------------------------------ _local_holder


def test_local_holder_without_a_lease_file(tmp_path: Path) -> None:
    assert status._local_holder(_run(tmp_path)) == (False, None)


def test_local_holder_with_a_lease_file(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (run / "control" / "lease.lock").write_text("")
    assert status._local_holder(run) == (True, None)  # nobody holds it
    (run / "control" / "lease.json").write_text(
        json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "job_id": None, "heartbeat": 4e9, "started": 1})
    )
    has, holder = status._local_holder(run)
    assert has is True and holder is not None and holder["pid"] == os.getpid()


def test_local_holder_of_a_damaged_lease_is_no_holder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mltrain.lease

    run = _run(tmp_path)
    (run / "control" / "lease.lock").write_text("")

    def broken(run_dir: Path) -> None:
        raise ValueError("damaged")

    monkeypatch.setattr(mltrain.lease, "lease_holder", broken)
    assert status._local_holder(run) == (True, None)


# ------------------------------------------------------------------ nodes


@pytest.mark.parametrize(
    "decision, shown",
    [
        ({"node": "node2"}, " on node2"),
        ({"node": "node1,node2,node3"}, " on node[1-3]"),
        ({"node": "a1,b7"}, " on a1,b7"),
        ({"node": ""}, ""),
        ({"node": None}, ""),
        ({}, ""),
    ],
)
def test_on_node(decision: dict, shown: str) -> None:
    assert status._on_node(decision) == shown


@pytest.mark.parametrize(
    "nodes, short",
    [
        (["node1", "node2", "node3", "gpu7"], "node[1-3],gpu7"),
        (["node3", "node1", "node2"], "node[1-3]"),
        (["node1", "node3", "node4", "node9"], "node[1,3-4,9]"),
        (["node9", "node10", "node11"], "node[9-11]"),
        (["node08", "node09", "node10"], "node[08-10]"),
        (["node007", "node008"], "node[007-008]"),
        (["node07", "node8"], "node[07,8]"),
        (["node7", "node08"], "node[7,08]"),
        (["node01", "node1"], "node[01,1]"),
        (["node0", "node1"], "node[0-1]"),
        (["node5", "node5"], "node5"),
        (["login", "node1", "login"], "login,node1"),
        (["a1b2", "a1b3"], "a1b[2-3]"),
        (["7", "8"], "[7-8]"),
        ([], ""),
    ],
)
def test_compress_nodes(nodes: list[str], short: str) -> None:
    assert compress_nodes(nodes) == short


@pytest.mark.parametrize("digits, padded", [("0", False), ("00", True), ("01", True), ("10", False), ("7", False)])
def test_padded(digits: str, padded: bool) -> None:
    assert status._padded(digits) is padded


# ------------------------------------------------------------------ wrap_line


def test_wrap_line_keeps_whole_parts_and_marks_each_with_its_separator() -> None:
    text = "job 7 RUNNING; on node[1-2]; allocation 1h02m in, 3h left; ckpt step 200 (5m ago)"
    assert wrap_line("  ", text, 40) == [
        "  job 7 RUNNING; on node[1-2];",
        "  allocation 1h02m in, 3h left;",
        "  ckpt step 200 (5m ago)",
    ]


def test_wrap_line_fits_on_one_line_when_it_can() -> None:
    assert wrap_line(">> ", "a; b; c", 80) == [">> a; b; c"]
    assert wrap_line("", "one part only", 80) == ["one part only"]


def test_wrap_line_breaks_a_long_word_and_never_cuts() -> None:
    path = "/fsx/" + "x" * 50
    lines = wrap_line("  ", f"see {path}; then retry", 24)
    assert all(len(line) <= 24 for line in lines), lines
    assert "".join(line.strip() for line in lines).replace(" ", "") == f"see{path};thenretry"
    assert lines == ["  see /fsx/xxxxxxxxxxxxx", "  xxxxxxxxxxxxxxxxxxxxxx", "  xxxxxxxxxxxxxxx;", "  then retry"]


def test_wrap_line_width_is_at_least_20() -> None:
    lines = wrap_line("", "alpha beta gamma delta epsilon zeta", 5)
    assert lines == ["alpha beta gamma", "  delta epsilon zeta"]


def test_wrap_line_a_part_wider_than_the_line_is_broken_inside() -> None:
    assert wrap_line("  ", "aaaa; bbbbbbbbbbbbbbbbbbbb; cc", 20) == ["  aaaa;", "  bbbbbbbbbbbbbbbbbb", "  bb; cc"]
    assert wrap_line("", "", 30) == []


# ------------------------------------------------------------------ straggler_line


def _strag(count: int, last: dict | None) -> RunStatus:
    return RunStatus(name="r", run_dir=Path("/r"), stragglers=count, last_straggler=last)


def test_straggler_line_with_times() -> None:
    last = {"step": 500, "rank": 13, "host": "p5-7", "gpu": "NVIDIA H100", "rank_time_s": 1.42, "median_s": 1.0}
    assert (
        straggler_line(_strag(3, last))
        == "stragglers: 3 (last at step 500: rank 13 on p5-7, NVIDIA H100, 1.42x the median)"
    )


def test_straggler_line_from_the_slowdown_when_times_are_missing_or_zero() -> None:
    last = {"step": 9, "rank": 0, "host": "h", "slowdown": 0.5, "rank_time_s": 3.0, "median_s": 0}
    assert straggler_line(_strag(1, last)) == "stragglers: 1 (last at step 9: rank 0 on h, 1.50x the median)"
    last = {"step": 9, "rank": 0, "host": "h", "slowdown": 0.25, "median_s": 2.0}
    assert straggler_line(_strag(1, last)) == "stragglers: 1 (last at step 9: rank 0 on h, 1.25x the median)"
    last = {"step": 9, "rank": 0, "host": "h", "slowdown": 0.25, "rank_time_s": "3", "median_s": 2.0}
    assert straggler_line(_strag(1, last)) == "stragglers: 1 (last at step 9: rank 0 on h, 1.25x the median)"


def test_straggler_line_without_a_ratio_or_names() -> None:
    assert straggler_line(_strag(2, {"slowdown": "n/a"})) == "stragglers: 2 (last at step ?: rank ? on ?)"
    assert straggler_line(_strag(2, {"step": 4, "rank": 1, "host": "h", "gpu": ""})) == (
        "stragglers: 2 (last at step 4: rank 1 on h)"
    )


def test_no_straggler_line_without_stragglers() -> None:
    assert straggler_line(_strag(0, {"step": 1})) is None
    assert straggler_line(_strag(3, None)) is None


# ------------------------------------------------------------------ status_json, discovery


def test_status_json_shape() -> None:
    last = {"step": 5, "rank": 1}
    r = RunStatus(name="r", run_dir=Path("/base/runs/r"), job_id="7", stragglers=2, last_straggler=last, notes=["n"])
    doc = status_json(r)
    assert doc["run_dir"] == "/base/runs/r" and isinstance(doc["run_dir"], str)
    assert doc["stragglers"] == {"count": 2, "last": {"step": 5, "rank": 1}}
    assert "last_straggler" not in doc
    assert (doc["name"], doc["job_id"], doc["notes"], doc["state"]) == ("r", "7", ["n"], "-")
    assert json.loads(json.dumps(doc)) == doc


def test_discover_finds_local_and_slurm_runs_only(tmp_path: Path) -> None:
    assert status._discover(tmp_path) == []
    runs = tmp_path / "runs"
    (runs / "b").mkdir(parents=True)
    (runs / "b" / "config.yaml").write_text("name: b\n")
    (runs / "a" / "slurm").mkdir(parents=True)
    (runs / "a" / "slurm" / "jobs.jsonl").write_text("{}\n")
    (runs / "c" / "slurm").mkdir(parents=True)  # a slurm dir without a job record
    (runs / "d").mkdir()
    (runs / "e.yaml").write_text("not a run dir\n")
    (runs / "f" / "config.yaml").mkdir(parents=True)  # a directory named config.yaml
    assert status._discover(tmp_path) == [runs / "a", runs / "b"]


@pytest.mark.parametrize(
    "prefix, text, width, lines",
    [
        # hyphens are not break points: a long word is cut at the width, not after its last hyphen
        ("", "x" * 25 + "ff-gg-hh-ii-jj-kk", 20, ["x" * 20, "  xxxxxff-gg-hh-ii-j", "  j-kk"]),
        # a part that fits beside the last line's text stays on it (exactly the width counts as fitting)
        ("    ", "ccc ff-gg-hh-ii-jj-kk; a dddd-eeee", 18, ["    ccc ff-gg-hh-ii-", "  jj-kk; a dddd-eeee"]),
        # ... and one that does not, with the separating space counted, starts a new line
        (
            ">> ",
            "bbff-gg-hh-ii-jj-kk; ff-gg-hh-ii-jj-kkdddd-eeee  ; a  ccc ",
            19,
            [">> bbff-gg-hh-ii-jj-", "  kk;", "  ff-gg-hh-ii-jj-kkd", "  ddd-eeee  ;", "  a  ccc"],
        ),
        # a blank last part adds nothing
        (
            ">> ",
            "node[1-2]" + "x" * 25 + " ccc ; dddd-eeee dddd-eeee ;   ",
            23,
            [">> node[1-2]xxxxxxxxxxx", "  xxxxxxxxxxxxxx ccc ;", "  dddd-eeee dddd-eeee ;"],
        ),
        # a word that fits the line only without the indent still gets it: continuation lines are indented
        ("", "bbbb anode[1-2]; " + "x" * 25 + " ccca", 26, ["bbbb anode[1-2];", "  " + "x" * 24, "  x ccca"]),
    ],
)
def test_wrap_line_edges(prefix: str, text: str, width: int, lines: list[str]) -> None:
    assert wrap_line(prefix, text, width) == lines


# ------------------------------------------------------------------ the table's cells and the detail line


def test_cells_of_a_run_with_every_figure() -> None:
    r = RunStatus(
        name="r", run_dir=Path("/r"), job_id="7", state="running", step=0, total_steps=10, loss=2.34567,
        eta_s=75, goodput=0.6, restarts=2, preemptions=1, tokens_per_s=12345.6, ckpt_step=0, mfu=0.4123,
    )  # fmt: skip
    assert status._cells(r) == ["r", "running", "0/10", "2.346", "1m15s", "60%", "2 (1p)", "12,346", "7", "0", "41.2%"]


def test_cells_of_a_run_that_knows_nothing_yet() -> None:
    r = RunStatus(name="r", run_dir=Path("/r"))
    assert status._cells(r) == ["r", "-", "-/?", "-", "-", "-", "0", "-", "-", "-", "-"]
    r = RunStatus(name="r", run_dir=Path("/r"), step=5, goodput=0.0, mfu=0.0, tokens_per_s=0.0, loss=0.0)
    assert status._cells(r)[2:8] == ["5/?", "0.000", "-", "0%", "0", "0"] and status._cells(r)[10] == "0.0%"


@pytest.mark.parametrize(
    "fields, line",
    [
        ({"job_id": "7", "scheduler_state": "RUNNING", "scheduler": "RUNNING node[1-2]"}, "job 7 RUNNING"),
        ({"job_id": "7", "scheduler": "PENDING (Priority)"}, "PENDING (Priority)"),
        ({"job_id": "7"}, "job 7"),
        ({"scheduler_state": "RUNNING"}, ""),
        ({"nodes": "node[1-2]"}, "on node[1-2]"),
        ({"alloc_elapsed_s": 3700}, "allocation 1h01m in"),
        ({"alloc_elapsed_s": 3700, "alloc_left_s": 120}, "allocation 1h01m in, 2m00s left"),
        ({"ckpt_step": 200, "ckpt_age_s": 300}, "ckpt step 200 (5m00s ago)"),
        ({"ckpt_step": 0}, "ckpt step 0 (- ago)"),
        (
            {"job_id": "7", "scheduler_state": "RUNNING", "nodes": "n1", "explanation": "why", "notes": ["a", "b"]},
            "job 7 RUNNING; on n1; why; a; b",
        ),
    ],
)
def test_detail_line(fields: dict, line: str) -> None:
    assert status.detail_line(RunStatus(name="r", run_dir=Path("/r"), **fields)) == line


# ------------------------------------------------------------------ show_status: the table, the lines, --json


def _local_run(base: Path, name: str, **cfg: object) -> Path:
    from tests.helpers import write_jsonl

    run = base / "runs" / name
    (run / "control").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\ntrain:\n  max_steps: 100\n")
    write_jsonl(
        run / "metrics.jsonl",
        [{"kind": "start", "time": 1.0, "step": 0}]
        + [{"kind": "train", "time": 2.0 + s, "step": s, "loss": 4.5, "tokens_per_s": 1234.0, "step_time_s": 1.0}
           for s in (10, 20)]
        + [{"kind": "exit", "time": 30.0, "step": 20, "reason": "done"}],
    )  # fmt: skip
    return run


def _console(width: int = 120) -> tuple[object, Console]:
    import io

    out = io.StringIO()
    return out, Console(file=out, width=width, force_terminal=True, color_system="truecolor")


from rich.console import Console  # noqa: E402


def _row_shown(plain: str, r: RunStatus) -> bool:
    """The table has r's row: its cells under the headers shown (columns with nothing in them are left out)."""
    header = next(line for line in plain.splitlines() if line.split()[:2] == ["run", "state"])
    names = [c.header for c in status.STATUS_COLUMNS]
    cells = status._cells(r)
    want = [cells[names.index(h)] for h in header.split()]
    return any(line.split() == want for line in plain.splitlines())


def test_no_runs_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLTRAIN_BASE_DIR", str(tmp_path))
    out, con = _console(400)
    assert status.show_status(None, console=con) == []
    assert out.getvalue() == f"no runs under {tmp_path / 'runs'} (set MLTRAIN_BASE_DIR or pass a run dir)\n"
    out, con = _console()
    assert status.show_status(None, console=con, json_out=True) == []
    assert out.getvalue() == "[]\n"


def test_json_is_the_status_json_of_each_run_indented_and_plain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLTRAIN_BASE_DIR", str(tmp_path))
    _local_run(tmp_path, "a")
    _local_run(tmp_path, "b")
    out, con = _console()
    rows = status.show_status(None, console=con, json_out=True)
    assert [r.name for r in rows] == ["a", "b"]
    assert out.getvalue() == json.dumps([status_json(r) for r in rows], indent=2) + "\n"  # no colour codes


def test_table_without_slurm_has_no_job_column_and_lines_are_plain(tmp_path: Path) -> None:
    import re

    run = _local_run(tmp_path, "a")
    out, con = _console(200)
    (row,) = status.show_status(str(run), console=con)
    text = out.getvalue()
    header = next(line for line in text.splitlines() if "state" in line)
    assert "job" not in re.sub(r"\x1b\[[0-9;]*m", "", header)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert _row_shown(plain, row), plain
    detail = [line for line in text.splitlines() if line.startswith("a: ")]
    assert detail == [f"a: {status.detail_line(row)}"]  # printed as is: no highlighting of its numbers


def test_table_with_a_slurm_run_keeps_the_job_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from tests.helpers import fake_slurm_bin, write_jsonl

    fake_slurm_bin(tmp_path, monkeypatch)
    local = _local_run(tmp_path, "a")
    slurm = _local_run(tmp_path, "b")
    write_jsonl(slurm / "slurm" / "jobs.jsonl", [{"event": "submit", "job_id": "4242", "time": 0.0}])
    out, con = _console(200)
    rows = status.show_status([str(local), str(slurm)], console=con)
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())
    header = next(line for line in plain.splitlines() if "state" in line)
    assert "job" in header.split() and [r.job_id for r in rows] == [None, "4242"]
    assert all(_row_shown(plain, r) for r in rows), plain


def test_a_narrow_terminal_says_which_columns_it_left_out(tmp_path: Path) -> None:
    import re

    run = _local_run(tmp_path, "a")
    out, con = _console(30)
    status.show_status(str(run), console=con)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.getvalue().splitlines()]
    first = next(i for i, line in enumerate(lines) if "narrow terminal" in line)
    said = " ".join(line.strip() for line in lines[first:])
    assert lines[first].startswith("(narrow terminal: ") and all(line.startswith("  ") for line in lines[first + 1 :])
    assert said == "(narrow terminal: good, rst, tok/s not shown)" and all(len(line) <= 30 for line in lines)
    raw = out.getvalue().splitlines()[first]
    assert raw == f"\x1b[2m{lines[first]}\x1b[0m"  # dim, and nothing else: no highlighting of its brackets


# ------------------------------------------------------------------ the run's config, its length, a current exit reason


def test_total_steps_from_the_config_else_the_newest_start_record() -> None:
    starts = [
        {"kind": "start", "max_steps": 100},
        {"kind": "train", "max_steps": 7},
        {"kind": "start", "max_steps": 300},
        {"kind": "train", "step": 5},
    ]
    assert status._total_steps({"train": {"max_steps": "50"}}, starts) == 50
    assert status._total_steps({}, starts) == 300
    assert status._total_steps({"train": {"max_steps": None}}, starts[:2]) == 100
    assert status._total_steps({"train": None}, [{"kind": "train", "max_steps": 7}, {"kind": "start"}]) is None
    assert status._total_steps({}, [{"kind": "start", "max_steps": "9"}]) is None
    assert status._total_steps({}, []) is None


def test_run_config_falls_back_to_the_slurm_copy(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (run / "slurm" / "run.yaml").write_text("name: from-slurm\n")
    assert status._run_config(run) == {"name": "from-slurm"}
    (run / "config.yaml").write_text("name: [unclosed\n")  # unreadable YAML: the copy still serves
    assert status._run_config(run) == {"name": "from-slurm"}
    (run / "config.yaml").write_text("name: local\n")
    assert status._run_config(run) == {"name": "local"}
    (run / "config.yaml").write_text("- a list\n")
    (run / "slurm" / "run.yaml").write_text("just text\n")
    assert status._run_config(run) == {}


@pytest.mark.parametrize(
    "written, current",
    [(None, False), (99.0, True), (98.5, False), (100.5, True), (150.0, True)],
)
def test_an_exit_reason_is_current_unless_the_latest_start_began_after_it(
    tmp_path: Path, written: float | None, current: bool
) -> None:
    """A start at t=100 (and a train record at 200, which is no start): the exit reason is about it when it was
    written at most 1 s before (clock skew between the writer and the start record), not when older."""
    run = _run(tmp_path)
    metrics = [{"kind": "start", "time": 100}, {"kind": "train", "time": 200.0}, {"kind": "start", "time": "x"}]
    if written is not None:
        (run / "control" / "exit_reason").write_text("done\n")
        os.utime(run / "control" / "exit_reason", (written, written))
    assert status._exit_reason_is_current(run, metrics) is current
    assert status._exit_reason_is_current(run, [{"kind": "train", "time": 1.0}]) is True  # no start at all
