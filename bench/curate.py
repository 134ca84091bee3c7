"""Curation throughput: mltrain's Spark pipeline (exact + MinHash near dedup + Gopher/C4 quality filters)
against datatrove's equivalent pipeline on the same generated corpus, and `data prepare` local vs Spark.

    python bench/curate.py [--size-mb 1024] [--cores N] [--no-datatrove] [--out PATH]

The corpus is generated (Zipf-distributed words, 5% exact copies, 5% edited near copies, 5% junk per
Gopher/C4 rule), so the run needs no download. Documents/s per core = input documents / wall seconds /
cores. datatrove comes from the `bench` extra; its language and log-prob filters need model downloads,
so both pipelines run without them. Results go to bench/results/curate-<date>.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS_DIR, git_commit, today, write_json

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


# the most frequent words are English stop words, as in real text (Gopher's stop-word rule needs them)
_STOP = ["the", "of", "and", "to", "in", "that", "is", "was", "for", "with", "as", "on", "by", "at", "have"]


def _vocab(rng: random.Random, n: int = 20_000) -> list[str]:
    return _STOP + ["".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


def _doc(rng: random.Random, vocab: list[str], cum: list[float]) -> str:
    lines = []
    for _ in range(rng.randint(4, 30)):
        words = rng.choices(vocab, cum_weights=cum, k=rng.randint(8, 24))
        lines.append(" ".join(words).capitalize() + rng.choice(".!?."))
    return "\n".join(lines)


def generate(root: Path, size_mb: int, seed: int = 0, file_mb: int = 32) -> dict[str, int]:
    """jsonl files of ~file_mb MB until size_mb; returns the planted counts."""
    rng = random.Random(seed)
    vocab = _vocab(rng)
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    root.mkdir(parents=True, exist_ok=True)
    counts = {"docs": 0, "exact": 0, "near": 0, "junk": 0}
    recent: list[str] = []
    written, index = 0, 0
    out = None
    while written < size_mb << 20:
        if out is None or out.tell() > file_mb << 20:
            if out is not None:
                out.close()
            out = open(root / f"part-{index:05d}.jsonl", "w", encoding="utf-8")  # noqa: SIM115
            index += 1
        r = rng.random()
        if r < 0.05 and recent:
            text, kind = rng.choice(recent), "exact"
        elif r < 0.10 and recent:
            words = rng.choice(recent).split(" ")
            for _ in range(2):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            text, kind = " ".join(words), "near"
        elif r < 0.15:
            text, kind = rng.choice(["Too short.", "- a\n- b\n- c", "# # # # ... ..."]), "junk"
        else:
            text, kind = _doc(rng, vocab, cum), "docs"
            recent = (recent + [text])[-1000:]
        line = json.dumps({"text": text}) + "\n"
        out.write(line)
        written += len(line)
        counts["docs"] += 1
        if kind != "docs":
            counts[kind] += 1
    if out is not None:
        out.close()
    counts["bytes"] = written
    return counts


def run_mltrain(src: Path, work: Path, cores: int) -> dict:
    from mltrain.config import CurateConfig
    from mltrain.data.curate.pipeline import curate

    cfg = CurateConfig(
        sources=[str(src)],
        output=str(work / "out"),
        work_dir=str(work / "steps"),
        spark_conf={
            "spark.ui.enabled": "false",
            "spark.driver.memory": "4g",
            "spark.sql.shuffle.partitions": str(cores * 4),
        },
    )
    t0 = time.perf_counter()
    report = curate(cfg, master=f"local[{cores}]")
    wall = time.perf_counter() - t0
    steps = {s["step"]: {"seconds": s.get("seconds"), "docs_out": s["docs_out"]} for s in report["steps"]}
    return {"seconds": round(wall, 2), "docs_out": report["output"]["docs"], "steps": steps, "out": str(work / "out")}


def run_datatrove(src: Path, work: Path, cores: int) -> dict:
    """Gopher repetition + quality, C4 filters, MinHash (14 x 8, 5-grams) dedup (exact copies are caught by
    MinHash too: datatrove's exact dedup is a separate substring pipeline)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    # sha1: datatrove's xxhash path passes str, which xxhash >= 4 refuses
    mh = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8, hash_config=HashConfig(hash_fc="sha1"))
    sigs, buckets, remove = work / "sigs", work / "buckets", work / "remove"
    tasks = max(1, cores)

    def ex(pipeline: list, name: str, n: int = tasks) -> LocalPipelineExecutor:
        return LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=cores, logging_dir=str(work / f"logs-{name}"))

    t0 = time.perf_counter()
    ex(
        [
            JsonlReader(str(src), glob_pattern="*.jsonl"),
            GopherRepetitionFilter(),
            GopherQualityFilter(),
            C4QualityFilter(filter_no_terminal_punct=False),
            JsonlWriter(str(work / "filtered")),
        ],
        "filter",
    ).run()
    ex([JsonlReader(str(work / "filtered")), MinhashDedupSignature(output_folder=str(sigs), config=mh)], "sig").run()
    ex([MinhashDedupBuckets(input_folder=str(sigs), output_folder=str(buckets), config=mh)], "buckets",
       mh.num_buckets).run()  # fmt: skip
    ex([MinhashDedupCluster(input_folder=str(buckets), output_folder=str(remove), config=mh)], "cluster", 1).run()
    ex(
        [
            JsonlReader(str(work / "filtered")),
            MinhashDedupFilter(input_folder=str(remove)),
            JsonlWriter(str(work / "out")),
        ],
        "dedup",
    ).run()
    wall = time.perf_counter() - t0
    kept = sum(1 for p in (work / "out").rglob("*.jsonl*") for _ in _lines(p))
    return {"seconds": round(wall, 2), "docs_out": kept}


def _lines(p: Path):
    import gzip

    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt", encoding="utf-8") as f:
        yield from f


def run_prepare(curated: Path, work: Path, cores: int) -> dict:
    """Local prepare vs Spark prepare of the curated parquet with one BPE (trained once, not timed)."""
    from mltrain.config import RunConfig
    from mltrain.data.prepare import prepare_data
    from mltrain.data.prepare_spark import prepare_data_spark

    def cfg(d: str, tok: str | None) -> RunConfig:
        data = {"sources": [str(curated)], "dir": str(work / d), "bpe_vocab_size": 8192, "shard_tokens": 1 << 24}
        if tok:
            data["tokenizer"] = tok
        return RunConfig.model_validate({"name": "b", "model": {"preset": "tiny", "vocab_size": 8192}, "data": data})

    prepare_data(cfg("train-bpe", None))
    tok = str(work / "train-bpe" / "tokenizer.json")
    t0 = time.perf_counter()
    local = prepare_data(cfg("local", tok))
    t_local = time.perf_counter() - t0
    t0 = time.perf_counter()
    spark = prepare_data_spark(
        cfg("spark", tok),
        master=f"local[{cores}]",
        spark_conf={"spark.ui.enabled": "false", "spark.driver.memory": "4g"},
    )
    t_spark = time.perf_counter() - t0
    same = all((work / "local" / s.file).read_bytes() == (work / "spark" / s.file).read_bytes() for s in local.shards)
    tokens = local.counts.train_tokens + local.counts.val_tokens
    return {
        "tokens": tokens,
        "local_seconds": round(t_local, 2),
        "spark_seconds": round(t_spark, 2),
        "shards_identical": same and spark.shards == local.shards,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--no-datatrove", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-curate-"))
    try:
        t0 = time.perf_counter()
        planted = generate(tmp / "raw", args.size_mb)
        print(f"generated {planted} in {time.perf_counter() - t0:.0f}s", flush=True)
        result = {"date": today(), "commit": git_commit(), "cores": args.cores, "size_mb": args.size_mb,
                  "corpus": planted}  # fmt: skip
        m = run_mltrain(tmp / "raw", tmp / "mltrain", args.cores)
        m["docs_per_s_per_core"] = round(planted["docs"] / m["seconds"] / args.cores, 1)
        result["mltrain_spark"] = m
        print("mltrain", m, flush=True)
        if not args.no_datatrove:
            try:
                d = run_datatrove(tmp / "raw", tmp / "datatrove", args.cores)
                d["docs_per_s_per_core"] = round(planted["docs"] / d["seconds"] / args.cores, 1)
            except ImportError as e:
                d = {"skipped": f"datatrove not importable: {e} (pip install 'mltrain[bench]')"}
            result["datatrove"] = d
            print("datatrove", d, flush=True)
        p = run_prepare(Path(m.pop("out")), tmp / "prepare", args.cores)  # a temp path: not kept in the result
        p["local_tokens_per_s"] = round(p["tokens"] / p["local_seconds"])
        p["spark_tokens_per_s"] = round(p["tokens"] / p["spark_seconds"])
        result["prepare"] = p
        print("prepare", p, flush=True)
        out = args.out or RESULTS_DIR / f"curate-{today()}.json"
        write_json(out, result)
        print(f"-> {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
