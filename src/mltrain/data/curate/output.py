"""The kept documents as parquet files whose content and names depend only on the kept set.

Documents are sorted by doc_id and cut into `n_files` equal runs by rank (not by Spark's sampled range
boundaries, which depend on the upstream partitioning): part-00000.parquet holds the first run, and so
on, so `data prepare` reading the output directory sees the documents in source order.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mltrain.data.curate.workdir import WorkDir

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

OUTPUT_SCHEMA = "doc_id long, text string"
TARGET_FILE_BYTES = 256 << 20
_PART = re.compile(r"^part-(\d+)")


def default_files(total_bytes: int) -> int:
    return max(1, -(-total_bytes // TARGET_FILE_BYTES))


def write_output(spark: SparkSession, kept: DataFrame, wd: WorkDir, dest: str, n_docs: int, n_files: int) -> list[str]:
    """Write `kept` (doc_id, text) to `dest` as part-NNNNN.parquet; return the file names in order."""
    n_files = max(1, min(n_files, n_docs))
    ordered = kept.select("doc_id", "text").orderBy("doc_id")
    if n_files == 1:
        df = ordered.coalesce(1).sortWithinPartitions("doc_id")
    else:
        rdd = (
            ordered.rdd.zipWithIndex()
            .map(lambda pair: (pair[1] * n_files // n_docs, (pair[0][0], pair[0][1])))
            .partitionBy(n_files, lambda k: k)
            .values()
        )
        df = spark.createDataFrame(rdd, OUTPUT_SCHEMA).sortWithinPartitions("doc_id")
    df.write.option("compression", "zstd").parquet(dest)
    names = []
    for name in wd.list_names(dest):
        m = _PART.match(name)
        if m and name.endswith(".parquet"):
            final = f"part-{int(m.group(1)):05d}.parquet"
            wd.rename(f"{dest}/{name}", f"{dest}/{final}")
            names.append(final)
    return sorted(names)
