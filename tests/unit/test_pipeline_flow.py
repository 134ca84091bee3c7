"""The pipeline's decisions without a scheduler: what counts as finished, waiting or failed; that submit
is idempotent (a finished run is not trained again, a live job is waited on, a failed run is resubmitted
under its own name so it resumes); the registry gate; the pipeline file's checks."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from mltrain.errors import ConfigError
from mltrain.integrations.mlflow_registry import check_gate
from mltrain.integrations.pipeline import ABSENT, DONE, FAILED, WAITING, Pipeline, classify, last_val_loss
from mltrain.integrations.pipeline_config import GateConfig, has_curate, load_pipeline


@pytest.mark.parametrize(
    ("st", "outcome"),
    [
        (None, ABSENT),
        ({"state": "done", "explanation": "finished", "job_id": "7"}, DONE),
        ({"state": "running", "running": True, "job_id": "7"}, WAITING),
        ({"state": "requeued", "explanation": "requeued after hang, waiting to start", "job_id": "7"}, WAITING),
        ({"state": "hang", "scheduler_state": "REQUEUED", "job_id": "7"}, WAITING),  # the batch script's recovery
        ({"state": "cancelled", "explanation": "cancelled; a new submit resumes from step 10", "job_id": "7"}, FAILED),
        ({"state": "failed", "explanation": "crashed; gave up after 2 restarts", "scheduler_state": "FAILED"}, FAILED),
        ({"state": "-", "explanation": "not started"}, ABSENT),
    ],
)
def test_classify(st, outcome):
    assert classify(st)[0] == outcome


def test_failed_cause_is_status_explanation():
    assert classify({"state": "cancelled", "explanation": "cancelled; a new submit resumes from step 10"}) == (
        FAILED,
        "cancelled; a new submit resumes from step 10",
    )
    assert classify({"state": "hang", "explanation": "hang: the watchdog dumped stacks"})[1].startswith("hang:")


class FakeRunner:
    """Records the mltrain commands; files live in a dict."""

    remote = False

    def __init__(self, out: str = "submitted job 42: run x") -> None:
        self.calls: list[list[str]] = []
        self.files: dict[str, str] = {}
        self.out = out

    def mltrain(self, args, timeout_s=None):
        self.calls.append(args)
        return subprocess.CompletedProcess(args, 0, self.out, "")

    def abspath(self, p):
        return p

    def read_text(self, p):
        return self.files.get(p)

    def write_text(self, p, text):
        self.files[p] = text

    def exists(self, p):
        return p in self.files


@pytest.fixture
def pipe_file(tmp_path):
    (tmp_path / "run.yaml").write_text("name: lm\n")
    p = tmp_path / "pipeline.yaml"
    p.write_text("run: run.yaml\ncluster: local.yaml\nrun_base_dir: /shared\nnodes: 1\nset: [train.max_steps=9]\n")
    return p


def _pipe(pipe_file, status, runner=None):
    runner = runner or FakeRunner()
    pipe = Pipeline(load_pipeline(pipe_file), "s3://b/corpus/v1", manifest_sha256="ab" * 32, runner=runner,
                    log=lambda m: None)  # fmt: skip
    pipe.status = lambda: status  # type: ignore[method-assign]
    return pipe, runner


def test_submit_first_time(pipe_file):
    pipe, runner = _pipe(pipe_file, None)
    r = pipe.submit()
    assert pipe.run_name == "lm-" + "ab" * 6 and pipe.run_dir == f"/shared/runs/{pipe.run_name}"
    assert r["job_id"] == "42" and not r["finished"] and r["resumed_from_step"] is None
    (args,) = runner.calls
    assert args[:2] == ["submit", str(pipe_file.parent / "run.yaml")] and args[-2:] == ["--nodes", "1"]
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sets[:2] == [f"name={pipe.run_name}", f"data.dir=/shared/data/{pipe.run_name}"]
    assert 'data.sources=["s3://b/corpus/v1/*.jsonl"]' in sets and sets[-1] == "train.max_steps=9"
    assert pipe.done("submit")["job_id"] == "42"


def test_submit_skips_a_finished_run_and_waits_on_a_live_job(pipe_file):
    pipe, runner = _pipe(pipe_file, {"state": "done", "explanation": "finished", "job_id": "5", "ckpt_step": 9})
    assert pipe.submit()["finished"] is True and runner.calls == []
    pipe, runner = _pipe(pipe_file, {"state": "requeued", "job_id": "5", "explanation": "requeued after hang"})
    r = pipe.submit()
    assert r["finished"] is False and r["job_id"] == "5" and runner.calls == []


def test_submit_resubmits_a_cancelled_run_under_its_name(pipe_file):
    st = {"state": "cancelled", "job_id": "5", "explanation": "cancelled; a new submit resumes from step 10",
          "ckpt_step": 10}  # fmt: skip
    logs: list[str] = []
    pipe, runner = _pipe(pipe_file, st)
    pipe.log = logs.append
    r = pipe.submit()
    assert r["resumed_from_step"] == 10 and f"name={pipe.run_name}" in runner.calls[0]
    assert "resumes from the step 10 checkpoint" in logs[-1]


def test_wait_fails_with_the_cause_and_waits_through_requeues(pipe_file):
    seq = iter([{"state": "running", "running": True, "job_id": "5"},
                {"state": "requeued", "job_id": "5", "explanation": "requeued after lost_rank"},
                {"state": "failed", "job_id": "5", "explanation": "crashed; gave up after 2 restarts"}])  # fmt: skip
    pipe, _ = _pipe(pipe_file, None)
    pipe.status = lambda: next(seq)  # type: ignore[method-assign]
    with pytest.raises(Exception, match="failed: failed: crashed; gave up after 2 restarts"):
        pipe.wait(sleep=lambda s: None)


def test_recorded_steps_are_not_redone(pipe_file):
    runner = FakeRunner()
    pipe, _ = _pipe(pipe_file, None, runner)
    runner.files[f"{pipe.data_dir}/manifest.json"] = "{}"
    pipe._record("prepare", {"data_dir": pipe.data_dir})
    logs: list[str] = []
    pipe.log = logs.append
    assert pipe.prepare()["data_dir"] == pipe.data_dir and runner.calls == []
    assert "already prepared" in logs[-1]


def test_last_val_loss():
    text = (
        '{"kind":"train","step":1,"loss":5}\n{"kind":"eval","step":4,"val_loss":4.5}\nbad\n{"step":8,"val_loss":4.1}\n'
    )
    assert last_val_loss(text) == (8, 4.1) and last_val_loss("") is None


class FakeRegistry:
    def __init__(self, version_loss=None):
        self.version_loss = version_loss

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException

        if self.version_loss is None:
            raise MlflowException("no alias")
        tags = {} if self.version_loss == "none" else {"mltrain.eval_loss": str(self.version_loss)}
        return SimpleNamespace(version="3", tags=tags)


def test_gate():
    pytest.importorskip("mlflow")
    assert check_gate(GateConfig(max_loss=4.0), 3.9, FakeRegistry(), "m")[0]
    ok, why = check_gate(GateConfig(max_loss=4.0), 4.0, FakeRegistry(), "m")
    assert not ok and "not below gate.max_loss 4.0" in why
    better = GateConfig(better_than_alias="production")
    assert check_gate(better, 3.0, FakeRegistry(), "m")[0]  # nothing in production yet
    assert check_gate(better, 3.0, FakeRegistry(3.5), "m")[0]
    ok, why = check_gate(better, 3.6, FakeRegistry(3.5), "m")
    assert not ok and "version 3 (m@production)" in why
    assert not check_gate(better, 3.0, FakeRegistry("none"), "m")[0]


def test_pipeline_file_checks(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("run: r.yaml\ncluster: c.yaml\nssh: {host: head}\n")
    with pytest.raises(ConfigError, match="run_base_dir"):
        load_pipeline(p)
    p.write_text("run: r.yaml\ncluster: c.yaml\nregistry: {tracking_uri: x}\n")
    with pytest.raises(ConfigError, match="model_name"):
        load_pipeline(p)


def test_has_curate(tmp_path):
    (tmp_path / "run.yaml").write_text("name: lm\ndata: {dir: d}\n")
    p = tmp_path / "p.yaml"
    p.write_text("run: run.yaml\ncluster: c.yaml\n")
    assert not has_curate(load_pipeline(p))
    (tmp_path / "run.yaml").write_text("name: lm\ndata: {dir: d, curate: {dedup: true}}\n")
    assert has_curate(load_pipeline(p))


def test_cli_and_pipeline_steps_never_import_airflow_or_mlflow():
    import sys

    code = (
        "import sys, mltrain.cli, mltrain.integrations.pipeline, mltrain.integrations.pipeline_watch\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'mlflow', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_run_does_every_step_in_order_and_waits_only_for_a_new_job(pipe_file):
    calls: list[str] = []
    pipe, _ = _pipe(pipe_file, None)
    for name in ("verify", "curate", "prepare", "evaluate", "export", "register"):
        setattr(pipe, name, lambda n=name: calls.append(n) or {"step": n})
    pipe.submit = lambda: calls.append("submit") or {"finished": False}  # type: ignore[method-assign]
    pipe.wait = lambda sleep: calls.append("wait") or {"finished": True}  # type: ignore[method-assign]
    results = pipe.run()
    assert calls == ["verify", "prepare", "submit", "wait", "evaluate", "export"]  # no registry, no curate
    assert results["train"] == {"finished": True}
    calls.clear()
    pipe.submit = lambda: calls.append("submit") or {"finished": True}  # type: ignore[method-assign]
    pipe.run()
    assert "wait" not in calls


def test_curate_reads_the_upload_and_prepare_reads_curate(tmp_path):
    (tmp_path / "run.yaml").write_text("name: lm\ndata: {dir: d, curate: {output: o, work_dir: w}}\n")
    p = tmp_path / "p.yaml"
    p.write_text("run: run.yaml\ncluster: c.yaml\nrun_base_dir: /shared\n")
    pipe = Pipeline(load_pipeline(p), "s3://b/v1/", manifest_sha256="cd" * 32, runner=FakeRunner(), log=print)
    sets = pipe.overrides()
    cur = f"/shared/curated/{pipe.run_name}"
    assert 'data.curate.sources=["s3://b/v1/*.jsonl"]' in sets and f"data.curate.output={cur}" in sets
    assert f"data.curate.work_dir={cur}.work" in sets and f'data.sources=["{cur}"]' in sets
    assert pipe.steps()[:3] == ["verify", "curate", "prepare"]
    p.write_text("run: run.yaml\ncluster: c.yaml\nrun_base_dir: /shared\ndata: {curate: false}\n")
    pipe = Pipeline(load_pipeline(p), "s3://b/v1/", manifest_sha256="cd" * 32, runner=FakeRunner(), log=print)
    assert 'data.sources=["s3://b/v1/*.jsonl"]' in pipe.overrides() and "curate" not in pipe.steps()


def test_shipped_pipeline_file_loads_and_names_shipped_configs():
    """configs/pipeline.yaml (the walkthrough's) validates; its run config and cluster spec exist and load."""
    from pathlib import Path

    from mltrain.config import load_run_config

    cfg = load_pipeline(Path(__file__).resolve().parents[2] / "configs" / "pipeline.yaml")
    assert Path(cfg.path(cfg.cluster)).is_file()
    load_run_config(cfg.path(cfg.run))
