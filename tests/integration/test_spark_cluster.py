"""A real Spark standalone cluster (master + two workers on 127.0.0.1): the packaged spark job entry point
(curate, then prepare --engine spark of the curated output in the same application) gives exactly the
local[*] results: the same kept documents in the same files, and byte-identical shards and manifest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import yaml
from curate_corpus import build
from spark_fixture import spark, spark_cluster, spark_conf_args  # noqa: F401
from test_spark_prepare import files_of

from mltrain.config import CurateConfig, QualityFilterConfig
from mltrain.data.curate.manifest import MANIFEST_FILE

pytestmark = pytest.mark.spark


def _run(*args: str, env: dict) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    print(res.stdout[-3000:])
    return res


def test_standalone_cluster_gives_the_local_results(tmp_path, spark, spark_cluster, monkeypatch):  # noqa: F811
    from mltrain.config import RunConfig
    from mltrain.data.curate.pipeline import curate
    from mltrain.data.prepare import prepare_data

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    build(tmp_path, n_good=60)
    curate_cfg = {
        "sources": [str(tmp_path / "raw")],
        "quality": {"max_words": 1000},
        "output_files": 2,
    }
    local_out = tmp_path / "local-out"
    curate(CurateConfig(**curate_cfg, output=str(local_out), work_dir=str(tmp_path / "local-work"),
                        ).model_copy(update={"quality": QualityFilterConfig(max_words=1000)}))  # fmt: skip
    data = {"bpe_vocab_size": 300, "shard_tokens": 8000, "val_fraction": 0.1}
    run = {"name": "c", "model": {"preset": "tiny"}}
    prepare_data(
        RunConfig.model_validate(
            {**run, "data": {**data, "sources": [str(local_out)], "dir": str(tmp_path / "local-data")}}
        )
    )

    cluster_out = tmp_path / "cluster-out"
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                **run,
                "data": {
                    **data,
                    "sources": [str(cluster_out)],  # prepare reads what curate wrote
                    "dir": str(tmp_path / "cluster-data"),
                    "curate": {**curate_cfg, "output": str(cluster_out), "work_dir": str(tmp_path / "cluster-work")},
                },
            }
        )
    )
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    _run("mltrain.data.curate", str(cfg_path), "--prepare", "--master", spark_cluster, *spark_conf_args(), env=env)
    a, b = json.loads((local_out / MANIFEST_FILE).read_text()), json.loads((cluster_out / MANIFEST_FILE).read_text())
    assert a["docs"] > 50 and a["docs"] == b["docs"]
    assert (
        [f["file"] for f in a["files"]]
        == [f["file"] for f in b["files"]]
        == ["part-00000.parquet", "part-00001.parquet"]
    )
    for f in a["files"]:  # the same rows in the same order in each file (Spark's page headers may differ)
        assert pq.read_table(local_out / f["file"]).equals(pq.read_table(cluster_out / f["file"]))

    local_files, cluster_files = files_of(tmp_path / "local-data"), files_of(tmp_path / "cluster-data")
    manifest = json.loads(cluster_files.pop("manifest.json"))
    want = json.loads(local_files.pop("manifest.json"))
    assert manifest["sources"] == [str(cluster_out)] and want["sources"] == [str(local_out)]
    manifest.pop("sources"), want.pop("sources")
    assert manifest == want and cluster_files == local_files
