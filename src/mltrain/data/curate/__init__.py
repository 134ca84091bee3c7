"""Corpus curation on Apache Spark: normalise, exact and MinHash near dedup, Gopher/C4 quality filters,
an optional language filter and a custom hook; parquet out with a report and a manifest.

Modules: config handling lives in mltrain.config (CurateConfig); session (Spark session, errors),
workdir (step commit and resume), readers (sources -> documents), text/quality/minhash (per-document
functions, no Spark), steps (the Spark steps), output/publish/manifest (the result), report (table),
emr (EMR and EMR Serverless configs), job (spark-submit entry). pyspark is imported inside functions only.
"""
