"""`mltrain data curate`: sources -> read+normalise -> exact dedup -> near dedup -> quality -> language ->
custom filter -> parquet + report + manifest. Each step is committed in the work dir with a key made
from its settings and the previous step's key, so a rerun reuses every step up to the first change."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mltrain.config import CurateConfig
from mltrain.data.curate import steps
from mltrain.data.curate.output import default_files, write_output
from mltrain.data.curate.publish import publish
from mltrain.data.curate.readers import check_units, doc_location, driver_aws_env, list_units
from mltrain.data.curate.session import spark_session, task_errors, under_spark_submit
from mltrain.data.curate.workdir import WorkDir, step_key
from mltrain.errors import DataError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from rich.console import Console

Build = Callable[["DataFrame"], tuple["DataFrame", Callable[["DataFrame"], dict[str, Any]] | None]]


class StepRunner:
    """Runs or reuses one step at a time and keeps the chain of keys and the per-step stats."""

    def __init__(self, spark: SparkSession, wd: WorkDir, cfg: CurateConfig, say: Callable[[str], None]) -> None:
        self.spark, self.wd, self.cfg, self.say = spark, wd, cfg, say
        self.key = ""
        self.kept: DataFrame | None = None
        self.steps: list[dict[str, Any]] = []

    def run(self, name: str, settings: Any, build: Build, bytes_in: str | None = None) -> dict[str, Any]:
        key = step_key(self.key, name, settings)
        info = self.wd.done(name, key)
        reused = info is not None
        t0 = time.perf_counter()
        if info is None:
            with task_errors(f"curate step {name}"):
                out, extra = build(self.kept)  # type: ignore[arg-type]
                tmp = self.wd.tmp(name)
                out.write.parquet(tmp)
                written = self.spark.read.parquet(tmp)
                info = {"step": name, **steps.step_stats(written, self.cfg.examples_per_rule, bytes_in)}
                if extra is not None:
                    info.update(extra(written))
                info["seconds"] = round(time.perf_counter() - t0, 2)
            self.wd.commit(name, key, info)
        info["reused"] = reused
        self.steps.append(info)
        self.key = key
        self.kept = self.spark.read.parquet(self.wd.path(name)).where("reason is null").select("doc_id", "text", "hash")
        removed = info["docs_in"] - info["docs_out"]
        self.say(
            f"  {name}: {info['docs_in']:,} -> {info['docs_out']:,} documents ({removed:,} removed)"
            + (" [dim](reused)[/]" if reused else f" [dim]{info.get('seconds', 0):.1f}s[/]")
        )
        if info["docs_in"] == 0:
            skipped = ", ".join(f"{n} {r}" for r, n in info.get("read_skipped", {}).items()) or "none skipped"
            raise DataError(f"curate.sources {self.cfg.sources}: no documents ({skipped})")
        if info["docs_out"] == 0:
            top = max(info["removed"].items(), key=lambda kv: kv[1]["docs"], default=("-", {"docs": 0}))
            raise DataError(
                f"curate step {name}: no documents left ({info['docs_in']} in, {top[1]['docs']} removed as "
                f"{top[0]!r}); loosen that rule's threshold in curate:"
            )
        return info


def curate(
    cfg: CurateConfig,
    master: str | None = None,
    spark_conf: dict[str, str] | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run (or resume) the pipeline; return the report (also written beside the output)."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if console is not None:
            console.print(msg, highlight=False)

    units = list_units(cfg.sources)
    check_units(units, cfg.text_field)
    if cfg.language is not None:
        steps.check_language_available()
    if cfg.custom_filter:
        steps.load_hook(cfg.custom_filter)
    master = master or (None if under_spark_submit() else cfg.master)
    say(
        f"[bold]curate[/] {len(units)} files -> {cfg.output} (Spark {master or 'from spark-submit'}, work dir {cfg.work_dir})"
    )
    with spark_session(master, {**cfg.spark_conf, **(spark_conf or {})}) as spark:
        with task_errors(f"curate.work_dir {cfg.work_dir}"):
            wd = WorkDir(spark, cfg.work_dir)
        env = driver_aws_env(spark.sparkContext.master)
        run = StepRunner(spark, wd, cfg, say)
        unit_list = [(u.index, u.url) for u in units]
        read_settings = {
            "units": [(u.url, u.size, u.version) for u in units],
            "text_field": cfg.text_field,
            "normalize": cfg.normalize,
        }
        read = run.run(
            "01-read",
            read_settings,
            lambda _: (
                steps.read_normalize(spark, unit_list, cfg, env),
                lambda out: {"read_skipped": steps.read_skips(out)},
            ),
            bytes_in="raw_bytes",
        )
        if cfg.exact_dedup:
            run.run("02-exact-dedup", {}, lambda k: (steps.exact_dedup(k), lambda out: {"clusters": _sizes(out)}))
        nd = cfg.near_dedup
        if nd.enabled:
            run.run("03-near-dedup", nd.model_dump(), lambda k: _near(spark, k, nd))
        if cfg.quality is not None:
            rule = steps.QualityRule(cfg.quality)
            run.run("04-quality", cfg.quality.model_dump(), lambda k: (steps.filter_docs(spark, k, rule), None))
        if cfg.language is not None:
            rule = steps.LanguageRule(cfg.language)
            run.run("05-language", cfg.language.model_dump(), lambda k: (steps.filter_docs(spark, k, rule), None))
        if cfg.custom_filter:
            rule = steps.CustomRule(cfg.custom_filter)
            run.run("06-custom", cfg.custom_filter, lambda k: (steps.filter_docs(spark, k, rule), None))

        last = run.steps[-1]
        n_files = cfg.output_files or default_files(last["bytes_out"])
        out_key = step_key(run.key, "output", n_files)
        out_info = wd.done("output", out_key)
        if out_info is None:
            with task_errors("curate output"):
                tmp = wd.tmp("output")
                files = write_output(spark, run.kept, wd, tmp, last["docs_out"], n_files)  # type: ignore[arg-type]
            out_info = {"files": files}
            wd.commit("output", out_key, out_info)
        report = _report(cfg, units, read, run.steps, last, spark.sparkContext.master)
        manifest = publish(
            wd, wd.path("output"), out_info["files"], cfg.output, report, last["docs_out"], last["bytes_out"], out_key
        )
    report["output"]["files"] = manifest["files"]
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


def _sizes(out: DataFrame) -> dict[str, Any]:
    sizes = steps.exact_clusters(out)
    return {"sizes": {str(k): v for k, v in sorted(sizes.items())}}


def _near(spark: SparkSession, kept: DataFrame, nd: Any) -> tuple[DataFrame, Callable]:
    groups = steps.clusters(steps.near_duplicate_edges(spark, kept, nd))
    summary = steps.cluster_summary(groups)
    return steps.near_dedup(spark, kept, groups), lambda _out: {"clusters": summary}


def _report(cfg: CurateConfig, units: list, read: dict, done: list[dict], last: dict, master: str) -> dict[str, Any]:
    """The JSON report: per step counts, removed per rule with examples (located as file:N), clusters."""
    for info in done:
        for exs in info.get("examples", {}).values():
            for ex in exs:
                ex.setdefault("source", doc_location(units, ex["doc_id"]))
        for members in info.get("clusters", {}).get("largest", []):
            members[:] = [doc_location(units, m) if isinstance(m, int) else m for m in members]
    return {
        "format_version": 1,
        "master": master,
        "sources": cfg.sources,
        "files": len(units),
        "read_skipped": read.get("read_skipped", {}),
        "steps": done,
        "output": {"path": cfg.output, "docs": last["docs_out"], "bytes": last["bytes_out"]},
        "config": cfg.model_dump(),
    }
