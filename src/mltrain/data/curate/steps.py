"""The curation steps, in order. Each takes the previous step's kept documents (doc_id, text, hash)
and returns every input row with `reason` set on the ones it removes (null = kept).

Per-document work runs in Python tasks (mapPartitions); grouping (exact duplicates, LSH buckets)
uses DataFrame built-ins. Every choice between documents is by smallest doc_id, so the kept set does
not depend on partitioning, the number of executors or the master.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from mltrain.config import CurateConfig, LanguageFilterConfig, NearDedupConfig, QualityFilterConfig
from mltrain.data.curate import minhash
from mltrain.data.curate.readers import unit_rows
from mltrain.data.curate.text import doc_hash, normalize
from mltrain.errors import DataError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

STEP_SCHEMA = "doc_id long, text string, hash string, reason string, raw_bytes long"
_MAX_ALL_PAIRS = 64  # an LSH bucket larger than this links its members to its smallest id only


# --------------------------------------------------------------------------- read + normalise


def _read_task(field: str, env: dict[str, str], do_normalize: bool) -> Callable[[Iterable], Iterator]:
    def run(units: Iterable[tuple[int, str]]) -> Iterator[tuple]:
        for doc_id, raw, skipped in unit_rows(list(units), field, env):
            if raw is None:  # a unit's skip counts, kept for the report
                yield doc_id, None, skipped, "read-skipped", 0
                continue
            text = normalize(raw) if do_normalize else raw
            yield doc_id, text, doc_hash(text), None if text.strip() else "empty", len(raw.encode("utf-8"))

    return run


def read_normalize(spark: SparkSession, units: list[tuple[int, str]], cfg: CurateConfig, env: dict) -> DataFrame:
    """One task per group of source files: read, normalise (NFC, whitespace), hash."""
    sc = spark.sparkContext
    slices = max(1, min(len(units), sc.defaultParallelism * 4))
    rdd = sc.parallelize(units, slices).mapPartitions(_read_task(cfg.text_field, env, cfg.normalize))
    return spark.createDataFrame(rdd, STEP_SCHEMA)


def _with_reason(df: DataFrame, reason: Any) -> DataFrame:
    from pyspark.sql import functions as F

    return df.select("doc_id", "text", "hash", reason.alias("reason"), F.lit(None).cast("long").alias("raw_bytes"))


# --------------------------------------------------------------------------- exact dedup


def exact_dedup(kept: DataFrame) -> DataFrame:
    """Documents with the same hash: the one with the smallest doc_id stays."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first = F.min("doc_id").over(Window.partitionBy("hash"))
    return _with_reason(kept, F.when(F.col("doc_id") != first, F.lit("exact-duplicate")))


def exact_clusters(step_out: DataFrame) -> dict[int, int]:
    """{cluster size: how many clusters} over the hashes that occur more than once."""
    from pyspark.sql import functions as F

    sizes = step_out.where("doc_id >= 0").groupBy("hash").count().where(F.col("count") > 1)
    return {int(r["count"]): int(r["n"]) for r in sizes.groupBy("count").agg(F.count("*").alias("n")).collect()}


# --------------------------------------------------------------------------- near dedup (MinHash LSH)


def _signature_task(nd: NearDedupConfig) -> Callable[[Iterable], Iterator]:
    def run(rows: Iterable) -> Iterator[tuple]:
        a, b = minhash.permutations(nd.bands * nd.rows, nd.seed)
        for row in rows:
            sig = minhash.signature(minhash.shingles(row[1], nd.ngram), a, b)
            yield row[0], bytes(sig.tobytes()), minhash.band_keys(sig, nd.bands, nd.rows)

    return run


def _bucket_pairs(ids: list[int]) -> Iterator[tuple[int, int]]:
    ids = sorted(ids)
    if len(ids) > _MAX_ALL_PAIRS:
        yield from ((ids[0], other) for other in ids[1:])
        return
    for i, x in enumerate(ids):
        for y in ids[i + 1 :]:
            yield x, y


def _verify_task(threshold: float) -> Callable[[Iterable], Iterator]:
    def run(rows: Iterable) -> Iterator[tuple[int, int]]:
        for r in rows:
            if minhash.similarity(r["sa"], r["sb"]) >= threshold:
                yield r["a"], r["b"]

    return run


def near_duplicate_edges(spark: SparkSession, kept: DataFrame, nd: NearDedupConfig) -> list[tuple[int, int]]:
    """Pairs (smaller id, larger id) that share an LSH band and whose signatures agree on >= threshold."""
    from pyspark.sql import functions as F

    sigs = spark.createDataFrame(
        kept.select("doc_id", "text").rdd.mapPartitions(_signature_task(nd)),
        "doc_id long, sig binary, bands array<long>",
    ).persist()
    try:
        buckets = (
            sigs.select("doc_id", F.posexplode("bands").alias("band", "key"))
            .groupBy("band", "key")
            .agg(F.collect_list("doc_id").alias("ids"))
            .where(F.size("ids") > 1)
        )
        pairs = spark.createDataFrame(
            buckets.rdd.flatMap(lambda r: _bucket_pairs(r["ids"])), "a long, b long"
        ).distinct()
        joined = pairs.join(sigs.select(F.col("doc_id").alias("a"), F.col("sig").alias("sa")), "a").join(
            sigs.select(F.col("doc_id").alias("b"), F.col("sig").alias("sb")), "b"
        )
        return sorted(joined.rdd.mapPartitions(_verify_task(nd.threshold)).collect())
    finally:
        sigs.unpersist()


def clusters(edges: list[tuple[int, int]]) -> dict[int, list[int]]:
    """Connected components (union-find): root (the smallest id) -> sorted members, for components > 1."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(find(x), []).append(x)
    return {root: sorted(m) for root, m in sorted(groups.items())}


def near_dedup(spark: SparkSession, kept: DataFrame, groups: dict[int, list[int]]) -> DataFrame:
    """Every member of a near-duplicate cluster but its smallest id is removed."""
    from pyspark.sql import functions as F

    removed = [(m,) for root, members in groups.items() for m in members if m != root]
    if not removed:
        return _with_reason(kept, F.lit(None).cast("string"))
    gone = spark.createDataFrame(removed, "doc_id long").withColumn("gone", F.lit(True))
    joined = kept.join(F.broadcast(gone) if len(removed) < 1_000_000 else gone, "doc_id", "left")
    return _with_reason(joined, F.when(F.col("gone"), F.lit("near-duplicate")))


def cluster_summary(groups: dict[int, list[int]]) -> dict[str, Any]:
    sizes = Counter(len(m) for m in groups.values())
    largest = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:5]
    return {"sizes": {str(k): v for k, v in sorted(sizes.items())}, "largest": [m[:10] for _, m in largest]}


# --------------------------------------------------------------------------- per-document filters


def _filter_task(make_rule: Callable[[], Callable[[str], str | None]]) -> Callable[[Iterable], Iterator]:
    def run(rows: Iterable) -> Iterator[tuple]:
        rule = make_rule()
        for row in rows:
            yield row[0], row[1], row[2], rule(row[1]), None

    return run


def filter_docs(
    spark: SparkSession, kept: DataFrame, make_rule: Callable[[], Callable[[str], str | None]]
) -> DataFrame:
    """`make_rule()` runs once per task (a model loads once) and gives text -> reason or None."""
    rdd = kept.select("doc_id", "text", "hash").rdd.mapPartitions(_filter_task(make_rule))
    return spark.createDataFrame(rdd, STEP_SCHEMA)


class QualityRule:
    """Picklable factory for the quality rules (tasks build it on the executors)."""

    def __init__(self, cfg: QualityFilterConfig) -> None:
        self.cfg = cfg

    def __call__(self) -> Callable[[str], str | None]:
        from mltrain.data.curate.quality import first_failure

        return lambda text: first_failure(text, self.cfg)


def _langid() -> Any:
    try:
        from langid.langid import LanguageIdentifier, model
    except ImportError:
        raise DataError(
            "curate.language needs the langid package, which ships its model (pip install langid)"
        ) from None
    return LanguageIdentifier.from_modelstring(model, norm_probs=True)


def check_language_available() -> None:
    """Fail on the driver, before any task, when the language model is not installed."""
    _langid()


class LanguageRule:
    def __init__(self, cfg: LanguageFilterConfig) -> None:
        self.cfg = cfg

    def __call__(self) -> Callable[[str], str | None]:
        ident = _langid()
        keep, floor = set(self.cfg.keep), self.cfg.min_score

        def rule(text: str) -> str | None:
            lang, score = ident.classify(text)
            return None if lang in keep and score >= floor else f"language-{lang}"

        return rule


def load_hook(spec: str) -> Callable[[str], Any]:
    """'module:function' -> the function; DataError (one line) when it cannot be imported."""
    import importlib

    module, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise DataError(f"curate.custom_filter {spec!r}: cannot import: {e}") from None
    if not callable(fn):
        raise DataError(f"curate.custom_filter {spec!r}: not a function")
    return fn


class CustomRule:
    """function(text) -> True/None keeps; False removes as 'custom'; a string removes with that reason."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __call__(self) -> Callable[[str], str | None]:
        fn = load_hook(self.spec)

        def rule(text: str) -> str | None:
            verdict = fn(text)
            if verdict is None or verdict is True:
                return None
            return "custom" if verdict is False else f"custom:{verdict}"

        return rule


# --------------------------------------------------------------------------- stats


def step_stats(out: DataFrame, examples_per_rule: int, bytes_in_col: str | None = None) -> dict[str, Any]:
    """Documents and bytes in and out, removed per reason, and the first examples of each reason."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    docs = out.where("doc_id >= 0")
    size = F.octet_length("text")
    in_bytes = F.col(bytes_in_col) if bytes_in_col else size
    rows = docs.groupBy("reason").agg(F.count("*").alias("n"), F.sum(size).alias("b"), F.sum(in_bytes).alias("bi"))
    stats: dict[str, Any] = {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "removed": {}}
    for r in rows.collect():
        n, b, bi = int(r["n"]), int(r["b"] or 0), int(r["bi"] or 0)
        stats["docs_in"] += n
        stats["bytes_in"] += bi
        if r["reason"] is None:
            stats["docs_out"], stats["bytes_out"] = n, b
        else:
            stats["removed"][r["reason"]] = {"docs": n, "bytes": bi}
    stats["removed"] = dict(sorted(stats["removed"].items()))
    stats["examples"] = {}
    if examples_per_rule and stats["removed"]:
        w = Window.partitionBy("reason").orderBy("doc_id")
        ex = (
            docs.where(F.col("reason").isNotNull())
            .withColumn("rn", F.row_number().over(w))
            .where(F.col("rn") <= examples_per_rule)
            .select("reason", "doc_id", F.substring("text", 1, 240).alias("text"))
            .orderBy("reason", "doc_id")
        )
        for r in ex.collect():
            stats["examples"].setdefault(r["reason"], []).append({"doc_id": int(r["doc_id"]), "text": r["text"]})
    return stats


def read_skips(out: DataFrame) -> dict[str, int]:
    """Records the readers skipped (bad JSON, non-UTF-8, missing field ...), summed over units."""
    total: Counter = Counter()
    for r in out.where("doc_id < 0").select("hash").collect():
        total.update(json.loads(r["hash"]))
    return dict(sorted(total.items()))
