"""`mltrain data curate` on a local Spark session: planted duplicates and junk go or stay as the
thresholds say, the report counts them, a rerun resumes from committed steps, bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from curate_corpus import build
from moto_fixture import run_cli
from spark_fixture import spark  # noqa: F401  (the shared local session)

from mltrain.config import CurateConfig, NearDedupConfig, QualityFilterConfig
from mltrain.data.curate.manifest import MANIFEST_FILE, REPORT_FILE
from mltrain.errors import DataError

pytestmark = pytest.mark.spark


def _kept(out: Path) -> list[str]:
    import pyarrow.parquet as pq

    files = sorted(out.glob("part-*.parquet"))
    return [t for f in files for t in pq.read_table(f).column("text").to_pylist()]


def _steps(report: dict) -> dict[str, dict]:
    return {s["step"]: s for s in report["steps"]}


def _hook(tmp_path: Path, session, flag: Path) -> str:
    """A custom filter module shipped to the executors the way a user would (addPyFile / --py-files)."""
    name = f"curate_hook_{tmp_path.name.replace('-', '_')}"
    src = tmp_path / f"{name}.py"
    src.write_text(
        "import os\n"
        "def drop_marked(text):\n"
        f"    if os.path.exists({str(flag)!r}):\n"
        "        raise RuntimeError('hook told to fail')\n"
        "    return 'marked' if text.startswith('Caf') else True\n"
    )
    session.sparkContext.addPyFile(str(src))
    return f"{name}:drop_marked"


def test_planted_corpus_kept_and_removed_as_the_thresholds_say_then_resumes(tmp_path, spark, monkeypatch):  # noqa: F811
    from mltrain.data.curate.pipeline import curate

    want = build(tmp_path)
    assert want["near_sims"][0] > 0.9 and 0.85 < want["near_sims"][1] < 0.9  # planted above the 0.8 threshold
    assert want["near_sims"][2] < 0.6 and want["near_sims"][3] < 0.4  # and below it
    flag = tmp_path / "fail-now"
    flag.touch()
    monkeypatch.syspath_prepend(str(tmp_path))
    hook = _hook(tmp_path, spark, flag)
    cfg = CurateConfig(
        sources=[str(tmp_path / "raw")],
        output=str(tmp_path / "out"),
        work_dir=str(tmp_path / "work"),
        quality=QualityFilterConfig(max_words=1000),
        custom_filter=hook,
        output_files=2,
    )
    # a job that dies in its last step: one line naming the step and the hook's error
    with pytest.raises(DataError, match=r"curate step 06-custom: .*hook told to fail") as e:
        curate(cfg)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()

    flag.unlink()
    report = curate(cfg)
    steps = _steps(report)
    assert [s["reused"] for s in report["steps"]] == [True, True, True, True, False]
    assert steps["01-read"]["docs_out"] == want["docs_read"]
    assert report["read_skipped"] == {"empty": 1, "invalid-json": 1}
    assert steps["02-exact-dedup"]["removed"]["exact-duplicate"]["docs"] == 5  # copies, whitespace, NFD, .txt
    assert steps["02-exact-dedup"]["clusters"]["sizes"] == {"2": 5}
    assert steps["03-near-dedup"]["removed"]["near-duplicate"]["docs"] == 2
    assert steps["03-near-dedup"]["clusters"]["sizes"] == {"2": 2}
    assert {r: v["docs"] for r, v in steps["04-quality"]["removed"].items()} == {r: 1 for r in want["junk"]}
    assert steps["06-custom"]["removed"] == {"custom:marked": {"docs": 1, "bytes": len(want["cafe"].encode())}}
    ex = steps["04-quality"]["examples"]["too-few-words"][0]
    assert ex["text"] == want["junk"]["too-few-words"] and ex["source"].endswith(
        "b.parquet:63"
    )  # 60 good + 2 near, then the junk

    kept = _kept(tmp_path / "out")
    assert len(kept) == report["output"]["docs"] == want["docs_read"] - 5 - 2 - 9 - 1
    assert len(set(kept)) == len(kept)
    assert not set(want["near_hi"]) & set(kept) and set(want["near_lo"]) <= set(kept)
    assert not set(want["junk"].values()) & set(kept)
    assert set(want["good"]) <= set(kept) and want["cafe"] not in kept  # originals stay, their copies go
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    assert [f["file"] for f in manifest["files"]] == ["part-00000.parquet", "part-00001.parquet"]
    assert manifest["docs"] == len(kept)
    on_disk = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert on_disk["output"]["docs"] == len(kept)

    # a changed threshold: the steps before it are reused, it and the later ones run again
    looser = cfg.model_copy(update={"quality": QualityFilterConfig(max_words=1000, min_words=5)})
    again = curate(looser)
    assert [s["reused"] for s in again["steps"]] == [True, True, True, False, False]
    assert "too-few-words" not in _steps(again)["04-quality"]["removed"]
    assert again["output"]["docs"] == report["output"]["docs"] + 1


def _cfg_file(tmp_path: Path, **curate) -> Path:
    cfg = {
        "name": "cur",
        "model": {"preset": "tiny"},
        "data": {"curate": {"output": str(tmp_path / "out"), "work_dir": str(tmp_path / "work"), **curate}},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _line(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode != 0 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_bad_input_is_one_line_and_a_non_zero_exit(tmp_path, spark, monkeypatch):  # noqa: F811
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    env = dict(os.environ)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text(json.dumps({"text": "Too short."}) + "\n")
    # every document filtered out: an error, not an empty dataset (the dedup steps cannot remove the only
    # document, so they are off: just the read and quality steps run)
    no_dedup = {"exact_dedup": False, "near_dedup": {"enabled": False}}
    line = _line(run_cli(env, "data", "curate", str(_cfg_file(tmp_path, sources=[str(raw)], **no_dedup))))
    assert "curate step 04-quality: no documents left" in line and "too-few-words" in line

    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.jsonl").write_text(json.dumps({"text": "  "}) + "\n" + "{oops\n")
    line = _line(run_cli(env, "data", "curate", str(_cfg_file(tmp_path, sources=[str(blank)]))))
    assert "no documents (1 empty, 1 invalid-json)" in line

    pq.write_table(pa.table({"body": ["x"]}), raw / "b.parquet")
    line = _line(run_cli(env, "data", "curate", str(_cfg_file(tmp_path, sources=[str(raw)]))))
    assert "b.parquet: no column 'text' (columns: body)" in line

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    pq.write_table(pa.table({"text": ["a document"]}), mixed / "1.parquet")
    pq.write_table(pa.table({"text": [1]}), mixed / "2.parquet")
    line = _line(run_cli(env, "data", "curate", str(_cfg_file(tmp_path, sources=[str(mixed)]))))
    assert "2.parquet: mixed schemas: column 'text' is int64" in line

    locked = tmp_path / "locked.jsonl"
    locked.write_text("{}\n")
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything: make the file a directory-shaped problem instead
        locked.chmod(0o644)
        locked = tmp_path / "dangling.jsonl"
        locked.symlink_to(tmp_path / "nowhere")
    line = _line(run_cli(env, "data", "curate", str(_cfg_file(tmp_path, sources=[str(locked)]))))
    assert str(locked.name) in line and ("cannot read" in line or "no such file" in line)

    line = _line(run_cli(env, "data", "curate", str(_cfg_file(tmp_path, sources=[str(raw)])), "--spark-conf", "oops"))
    assert "--spark-conf 'oops': expected KEY=VALUE" in line


def test_relative_paths_are_the_drivers_current_directory(tmp_path, spark, monkeypatch):  # noqa: F811
    """The JVM keeps the directory it started in; a relative work_dir and output still land under the
    driver's current directory, as a second curate in the same process (after a chdir) expects."""
    from mltrain.data.curate.pipeline import curate

    build(tmp_path)
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)
    work = f"curate-work-{tmp_path.name}"
    # the read step and the output are enough to place the work dir and the output: no dedup or filters
    cfg = CurateConfig(
        sources=[str(tmp_path / "raw")],
        output="out",
        work_dir=work,
        master="local[2]",
        exact_dedup=False,
        near_dedup=NearDedupConfig(enabled=False),
        quality=None,
    )
    report = curate(cfg)
    assert (here / work / "01-read").is_dir() and (here / work / "output").is_dir()
    assert (here / "out" / MANIFEST_FILE).exists()
    assert len(_kept(here / "out")) == report["output"]["docs"] > 0
