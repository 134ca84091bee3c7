"""`data.curate` config, the EMR render and the CLI's one-line refusals (no Spark started)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from mltrain.config import ConfigError, load_run_config
from mltrain.data.curate.emr import render_emr
from mltrain.data.curate.session import error_line, parse_conf
from mltrain.errors import DataError


def _write(tmp_path, curate=None, **data):
    cfg = {"name": "c", "model": {"preset": "tiny"}, "data": dict(data)}
    if curate is not None:
        cfg["data"]["curate"] = curate
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_curate_section_is_optional_and_strict(tmp_path):
    assert load_run_config(_write(tmp_path)).data.curate is None
    cfg = load_run_config(_write(tmp_path, {"sources": ["raw/"], "output": "out", "near_dedup": {"bands": 20}}))
    assert cfg.data.curate.near_dedup.bands == 20 and cfg.data.curate.quality.min_words == 50
    with pytest.raises(ConfigError, match="near_dedup.rowz"):
        load_run_config(_write(tmp_path, {"sources": ["raw/"], "output": "out", "near_dedup": {"rowz": 2}}))
    with pytest.raises(ConfigError, match="custom_filter"):
        load_run_config(_write(tmp_path, {"sources": ["raw/"], "output": "out", "custom_filter": "not a hook"}))


def test_spark_conf_pairs_and_error_lines():
    assert parse_conf(["a.b=1", "c=x=y"]) == {"a.b": "1", "c": "x=y"}
    with pytest.raises(DataError, match="expected KEY=VALUE"):
        parse_conf(["novalue"])
    trace = "Traceback...\n  File x\nmltrain.errors.DataError: f.jsonl: cannot read\n\tat org.apache..."
    assert error_line(RuntimeError(trace)) == "f.jsonl: cannot read"
    assert error_line(RuntimeError("junk\nValueError: bad thing\nmore")) == "ValueError: bad thing"


def test_render_emr_writes_graviton_cluster_and_serverless_configs(tmp_path):
    cfg = _write(tmp_path, {"sources": ["s3://b/raw/"], "output": "s3://b/curated", "work_dir": "hdfs:///curate"})
    out = tmp_path / "emr"
    names = {p.name for p in render_emr(out, cfg)}
    assert {"emr-create-cluster.sh", "bootstrap-mltrain.sh", "curate_job.py", "emr-serverless-job.json"} <= names
    cmd = (out / "emr-create-cluster.sh").read_text()
    assert "--release-label emr-7" in cmd and "r8g." in cmd and "m8g." in cmd and "bootstrap-mltrain.sh" in cmd
    assert "spark-submit" in cmd and "curate_job.py" in cmd and "run.yaml" in cmd
    job = json.loads((out / "emr-serverless-job.json").read_text())
    assert job["jobDriver"]["sparkSubmit"]["entryPoint"].endswith("curate_job.py")
    assert "--architecture ARM64" in (out / "emr-serverless-application.sh").read_text()
    assert "pip install" in (out / "bootstrap-mltrain.sh").read_text()
    compile((out / "curate_job.py").read_text(), "curate_job.py", "exec")


def test_cli_refuses_a_config_without_curate_in_one_line(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "mltrain", "data", "curate", str(_write(tmp_path))], capture_output=True, text=True
    )
    assert res.returncode == 1 and "no data.curate section" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "mltrain", "data", "prepare", str(_write(tmp_path)), "--engine", "dask"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "--engine 'dask': expected local or spark" in res.stderr


def test_language_filter_without_its_package_is_one_line(monkeypatch):
    from mltrain.data.curate import steps

    monkeypatch.setitem(sys.modules, "langid", None)
    monkeypatch.setitem(sys.modules, "langid.langid", None)
    with pytest.raises(DataError, match=r"curate.language needs the langid package, .*\(pip install langid\)"):
        steps.check_language_available()


def test_pyspark_is_not_imported_by_the_cli():
    code = "import sys, mltrain.cli, mltrain.cli.data; print('pyspark' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
