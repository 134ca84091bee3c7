"""`data prepare --engine spark` writes the same bytes as the local path: shards, manifest, tokenizer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from spark_fixture import spark  # noqa: F401  (the shared local session)

from mltrain.config import RunConfig

pytestmark = pytest.mark.spark


def corpus(root: Path, seed: int = 3) -> Path:
    """jsonl + parquet + txt with a bad line and unicode, ~150 KB."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "délta", "εψιλον", "zeta", "eta", "theta", "日本", "kappa", "λ", "mu"]

    def doc() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(5, 300)))

    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        lines = [json.dumps({"text": doc()}) for _ in range(60)]
        lines.insert(7, "{bad json")
        (root / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.table({"text": [doc() for _ in range(40)]}), root / "more.parquet")
    (root / "notes.txt").write_text(doc())
    return root


def files_of(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def run_cfg(data_dir: Path, sources: list[str], **data) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "prep",
            "model": {"preset": "tiny"},
            "data": {
                "sources": sources,
                "dir": str(data_dir),
                "bpe_vocab_size": 400,
                "shard_tokens": 8_000,
                "val_fraction": 0.1,
                **data,
            },
        }  # fmt: skip
    )


def test_spark_prepare_is_byte_identical_to_local(tmp_path, spark, monkeypatch):  # noqa: F811
    from mltrain.data.prepare import prepare_data
    from mltrain.data.prepare_spark import prepare_data_spark

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    src = corpus(tmp_path / "raw")
    local = prepare_data(run_cfg(tmp_path / "local", [str(src)]))
    on_spark = prepare_data_spark(run_cfg(tmp_path / "spark", [str(src)]))
    assert len(local.shards) >= 4 and local.counts.val_docs > 0 and local.counts.skipped_reasons == {"invalid-json": 3}
    assert on_spark == local
    a, b = files_of(tmp_path / "local"), files_of(tmp_path / "spark")
    assert sorted(a) == sorted(b) and "manifest.json" in a
    assert [n for n in a if a[n] != b[n]] == []  # every shard, the manifest and the tokenizer, byte for byte

    # validation from its own files, and a byte cap that stops inside a file: the same again
    capped = {"val_sources": [str(src / "more.parquet")], "max_source_bytes": 60_000}
    local = prepare_data(run_cfg(tmp_path / "local2", [str(src / "*.jsonl")], **capped))
    on_spark = prepare_data_spark(run_cfg(tmp_path / "spark2", [str(src / "*.jsonl")], **capped))
    assert local.counts.val_docs == 40 and on_spark == local
    a, b = files_of(tmp_path / "local2"), files_of(tmp_path / "spark2")
    assert a == b
