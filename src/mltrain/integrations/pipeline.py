"""The steps from an uploaded dataset version to a registered model: verify, curate, prepare, submit (and
wait), eval, export, register. The Airflow operators and `mltrain pipeline run|watch` call the same steps.

Identity: a dataset version is its S3 prefix; its run is `<name>-<first 12 hex of the manifest's sha256>`,
so the same data always maps to the same run and a second pipeline run for it finds that run.
Idempotence: each step's result is written to `<run dir>/pipeline/<step>.json` (atomically); a step
whose result is there (and still true: the shards, the export dir, the finished run) logs that and
returns it. Submit asks the run's truthful status (mltrain.launch.status) first: a finished run is not
trained again, a run with a live job is waited on, a failed or cancelled one is submitted again under
the same name and so resumes from its newest checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from mltrain.integrations.pipeline_config import PipelineConfig, has_curate
from mltrain.integrations.pipeline_runner import LocalRunner, PipelineError, Runner, SshRunner, last_line

STEP_DIR = "pipeline"
DONE, WAITING, FAILED, ABSENT = "done", "waiting", "failed", "absent"
# RunStatus.state words of a run still on its way (the scheduler will run it, or runs it now)
WAITING_STATES = {"running", "pending", "requeued", "unknown"}  # unknown: the scheduler did not answer
STEP_TIMEOUT_S = 6 * 3600  # prepare/eval/export of a large corpus or model: long, never forever

Log = Callable[[str], None]


def run_name_for(prefix: str, manifest_sha256: str) -> str:
    """The run of one dataset version: the same data, the same run."""
    return f"{prefix}-{manifest_sha256[:12]}"


def classify(st: dict[str, Any] | None) -> tuple[str, str]:
    """(done | waiting | failed | absent, cause) from `mltrain status --json`'s record of a run.

    Waiting while the scheduler still holds the job (running, pending, requeued by the batch script's own
    recovery): a requeue is not a failure. Failed only once no job is left to finish it."""
    from mltrain.launch.slurm import ACTIVE_STATES

    if st is None:
        return ABSENT, "not submitted"
    state = str(st.get("state") or "-")
    why = str(st.get("explanation") or state)
    if state == "done":
        return DONE, why
    if st.get("running") or state in WAITING_STATES or st.get("scheduler_state") in ACTIVE_STATES:
        return WAITING, why
    if state == "-" and not st.get("job_id"):
        return ABSENT, why
    return FAILED, f"{state}: {why}" if not why.startswith(state) else why


class Pipeline:
    """One dataset version under one PIPELINE.yaml."""

    def __init__(
        self,
        cfg: PipelineConfig,
        data_uri: str,
        *,
        manifest_sha256: str | None = None,
        runner: Runner | None = None,
        s3_client: Any = None,
        env: dict[str, str] | None = None,
        log: Log | None = None,
    ) -> None:
        self.cfg = cfg
        self.data_uri = data_uri if data_uri.endswith("/") else data_uri + "/"
        self.digest = manifest_sha256
        self._client = s3_client
        self.log: Log = log or (lambda m: print(m, flush=True))
        env = dict(env or {})
        if cfg.endpoint_url and "AWS_ENDPOINT_URL" not in env:
            env["AWS_ENDPOINT_URL"] = cfg.endpoint_url
        self.runner = runner or _runner(cfg, env)

    # ------------------------------------------------------------------ identity and places

    @property
    def client(self) -> Any:
        if self._client is None:
            from mltrain.storage.client import S3Options, make_client

            self._client = make_client(S3Options(self.cfg.endpoint_url), validate_responses=False)
        return self._client

    def manifest_sha256(self) -> str:
        """sha256 of the uploaded version's manifest object (the data's identity)."""
        if self.digest is None:
            from mltrain.storage.client import unless_missing
            from mltrain.storage.manifest import MANIFEST_NAME
            from mltrain.storage.url import parse_s3_url

            url = parse_s3_url(self.data_uri)
            key = url.key(MANIFEST_NAME)
            body = unless_missing(
                lambda: self.client.get_object(Bucket=url.bucket, Key=key)["Body"].read(), f"s3://{url.bucket}/{key}"
            )
            if body is None:
                raise PipelineError(f"{self.data_uri}: no {MANIFEST_NAME} (upload with `mltrain data upload`)")
            self.digest = hashlib.sha256(body).hexdigest()
        return self.digest

    @cached_property
    def base_name(self) -> str:
        if self.cfg.name:
            return self.cfg.name
        from mltrain.integrations.pipeline_config import raw_run_config

        name = raw_run_config(self.cfg).get("name")
        if not isinstance(name, str) or not name:
            raise PipelineError(f"{self.cfg.run}: no name: set name: in the pipeline file")
        return name

    @property
    def run_name(self) -> str:
        return run_name_for(self.base_name, self.manifest_sha256())

    @cached_property
    def run_base(self) -> str:
        if self.cfg.run_base_dir:
            return self.runner.abspath(self.cfg.path(self.cfg.run_base_dir))
        if self.cfg.launcher == "slurm":
            from mltrain.cluster.spec import load_cluster_spec

            return self.runner.abspath(load_cluster_spec(self.cfg.path(self.cfg.cluster)).run_base_dir)
        from mltrain.cluster.spec import load_eks_spec

        st = load_eks_spec(self.cfg.path(self.cfg.cluster)).storage
        return st.local_run_base_dir or st.run_base_dir

    @property
    def run_dir(self) -> str:
        return f"{self.run_base.rstrip('/')}/runs/{self.run_name}"

    @property
    def data_dir(self) -> str:
        if self.cfg.data.dir:
            return self.runner.abspath(self.cfg.path(self.cfg.data.dir.replace("{run}", self.run_name)))
        return f"{self.run_base.rstrip('/')}/data/{self.run_name}"

    @property
    def curated_dir(self) -> str:
        if self.cfg.data.curated:
            return self.runner.abspath(self.cfg.path(self.cfg.data.curated.replace("{run}", self.run_name)))
        return f"{self.run_base.rstrip('/')}/curated/{self.run_name}"

    def overrides(self) -> list[str]:
        """The --set list of every command of this version's run. With curate, curate reads the uploaded
        files and prepare reads curate's output; else prepare reads the uploaded files."""
        sets = [f"name={self.run_name}", f"data.dir={self.data_dir}"]
        uploaded = [self.data_uri + g for g in self.cfg.data.sources]
        if has_curate(self.cfg):
            if uploaded:
                sets.append("data.curate.sources=" + json.dumps(uploaded))
            sets += [f"data.curate.output={self.curated_dir}", f"data.curate.work_dir={self.curated_dir}.work"]
            sets.append("data.sources=" + json.dumps([self.curated_dir]))
        elif uploaded:
            sets.append("data.sources=" + json.dumps(uploaded))
        reg = self.cfg.registry
        if reg is not None and reg.log_metrics:
            sets += [f"log.mlflow.uri={reg.tracking_uri}", f"log.mlflow.experiment={reg.experiment}"]
        return [*sets, *self.cfg.set]

    def _set_args(self) -> list[str]:
        return [a for s in self.overrides() for a in ("--set", s)]

    # ------------------------------------------------------------------ step records

    def _record_path(self, step: str) -> str:
        return f"{self.run_dir}/{STEP_DIR}/{step}.json"

    def done(self, step: str) -> dict[str, Any] | None:
        """The recorded result of `step`, None when it has not succeeded."""
        text = self.runner.read_text(self._record_path(step))
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def _record(self, step: str, result: dict[str, Any]) -> dict[str, Any]:
        self.runner.write_text(self._record_path(step), json.dumps({**result, "time": time.time()}, indent=1) + "\n")
        return result

    def _mltrain(self, what: str, args: list[str], timeout_s: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess:
        try:
            p = self.runner.mltrain(args, timeout_s=timeout_s)
        except subprocess.TimeoutExpired:
            raise PipelineError(f"{what} (run {self.run_name}): did not finish within {timeout_s:.0f} s") from None
        if p.returncode != 0:
            raise PipelineError(f"{what} (run {self.run_name}): {last_line(p)}")
        return p

    def _identity(self) -> dict[str, Any]:
        return {"run_name": self.run_name, "run_dir": self.run_dir, "data_uri": self.data_uri}

    # ------------------------------------------------------------------ steps

    def verify(self) -> dict[str, Any]:
        """Every object of the version checked against its manifest (size + S3 checksum); the markers
        that announce the upload are not data and are not counted as extra."""
        from mltrain.storage.url import parse_s3_url
        from mltrain.storage.verify import verify_prefix

        digest = self.manifest_sha256()
        prev = self.done("verify")
        if prev and prev.get("manifest_sha256") == digest:
            self.log(f"verify: {self.data_uri} already verified (manifest sha256 {digest[:12]}); nothing to do")
            return prev
        rep = verify_prefix(self.client, parse_s3_url(self.data_uri), progress=False)
        extra = [e for e in rep.extra if e.rsplit("/", 1)[-1] not in self.cfg.markers]
        problems = [*(f"missing {m}" for m in rep.missing), *(f"extra {e}" for e in extra), *rep.mismatched]
        if problems:
            raise PipelineError(
                f"verify {self.data_uri}: {len(problems)} problem(s) against the manifest, first: {problems[0]}"
            )
        self.log(f"verify: {self.data_uri}: {rep.checked} objects, {rep.bytes} bytes match the manifest")
        return self._record(
            "verify",
            {**self._identity(), "manifest_sha256": digest, "objects": rep.checked, "bytes": rep.bytes},
        )

    def curate(self) -> dict[str, Any]:
        """`mltrain data curate RUN_YAML` (its data.curate section) with this version's overrides."""
        if prev := self.done("curate"):
            self.log(f"curate: run {self.run_name} already curated; nothing to do")
            return prev
        self._mltrain("data curate", ["data", "curate", self.cfg.path(self.cfg.run), *self._set_args()])
        self.log(f"curate: run {self.run_name} curated")
        return self._record("curate", self._identity())

    def prepare(self) -> dict[str, Any]:
        """`mltrain data prepare` of the version's files into data_dir (tokenized, packed, manifest)."""
        from mltrain.data.manifest import MANIFEST_FILE

        manifest = f"{self.data_dir}/{MANIFEST_FILE}"
        prev = self.done("prepare")
        if prev and self.runner.exists(manifest):
            self.log(f"prepare: {self.data_dir} already prepared; nothing to do")
            return prev
        self._mltrain("data prepare", ["data", "prepare", self.cfg.path(self.cfg.run), *self._set_args()])
        self.log(f"prepare: shards in {self.data_dir}")
        return self._record("prepare", {**self._identity(), "data_dir": self.data_dir})

    def status(self) -> dict[str, Any] | None:
        """`mltrain status --json` of the run; None before it was ever submitted."""
        rd = self.run_dir
        if not any(self.runner.exists(f"{rd}/{f}") for f in ("config.yaml", "slurm/jobs.jsonl", "k8s/jobs.jsonl")):
            return None
        if isinstance(self.runner, LocalRunner):
            from mltrain.launch.status import run_status, status_json

            return json.loads(json.dumps(status_json(run_status(Path(rd))), default=str))
        p = self._mltrain("status", ["status", rd, "--json"], timeout_s=300)
        rows = json.loads(p.stdout)
        return rows[0] if rows else None

    def job_ids(self) -> list[str]:
        """Every job this run was submitted as, oldest first (Slurm job ids or Kubernetes job ids)."""
        out: list[str] = []
        for f in ("slurm/jobs.jsonl", "k8s/jobs.jsonl"):
            for line in (self.runner.read_text(f"{self.run_dir}/{f}") or "").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("event", "submit") == "submit" and rec.get("job_id"):
                    out.append(str(rec["job_id"]))
        return out

    def submit(self) -> dict[str, Any]:
        """Submit the run unless it finished or has a live job; returns {finished: bool, job_id, ...}."""
        st = self.status()
        outcome, why = classify(st)
        if outcome == DONE:
            self.log(f"submit: run {self.run_name} already finished ({why}); not training again")
            return self.train_result(st)
        if outcome == WAITING:
            assert st is not None
            self.log(f"submit: run {self.run_name} already has job {st.get('job_id')} ({why}); waiting on it")
            return {**self._identity(), "finished": False, "job_id": st.get("job_id")}
        resume = st.get("ckpt_step") if st else None
        if self.cfg.registry is not None and self.cfg.registry.log_metrics:
            from mltrain.integrations.mlflow_registry import ensure_experiment

            ensure_experiment(self.cfg.registry)
        run_yaml = self.cfg.path(self.cfg.run)
        if self.cfg.launcher == "slurm":
            args = ["submit", run_yaml, "--cluster", self.cfg.path(self.cfg.cluster), *self._set_args()]
            args += ["--nodes", str(self.cfg.nodes)] if self.cfg.nodes else []
            pattern = r"submitted job (\d+)"
        else:
            args = ["k8s", "submit", run_yaml, "--cluster", self.cfg.path(self.cfg.cluster)]
            args += ["--kind", self.cfg.k8s_kind, *self._set_args()]
            pattern = r"job id (\S+?)\)"
        p = self._mltrain("submit", args, timeout_s=600)
        m = re.search(pattern, p.stdout + p.stderr)
        if m is None:
            raise PipelineError(f"submit (run {self.run_name}): no job id in its output: {last_line(p)}")
        job_id = m.group(1)
        again = f"; after {why}, it resumes from the step {resume} checkpoint" if resume is not None else ""
        self.log(f"submit: run {self.run_name} submitted as job {job_id}{again}")
        prev = self.done("submit") or {}
        return self._record(
            "submit",
            {
                **self._identity(),
                "finished": False,
                "job_id": job_id,
                "resumed_from_step": resume,
                "git_commit": None if self.runner.remote else (prev.get("git_commit") or self.code_commit()),
                "cluster": self.cfg.cluster,
                "launcher": self.cfg.launcher,
            },
        )

    def code_commit(self) -> str | None:
        """The git commit of the code that trains: the run's script's checkout (a script run), else mltrain's
        own (the built-in trainer); None outside a git checkout (an installed wheel: see mltrain.version)."""
        from mltrain.integrations.pipeline_config import raw_run_config

        script = raw_run_config(self.cfg).get("script")
        if isinstance(script, dict) and isinstance(script.get("path"), str):
            path = os.path.join(os.path.dirname(self.cfg.path(self.cfg.run)), script["path"])
            return git_commit(path)
        import mltrain

        return git_commit(mltrain.__file__ or "")

    def train_result(self, st: dict[str, Any] | None = None) -> dict[str, Any]:
        """The finished run as XCom: run name, checkpoint, its last metrics, every job id."""
        st = st if st is not None else self.status()
        if st is None:
            raise PipelineError(f"run {self.run_name}: no run dir at {self.run_dir}")
        return {
            **self._identity(),
            "finished": classify(st)[0] == DONE,
            "job_id": st.get("job_id"),
            "job_ids": self.job_ids(),
            "state": st.get("state"),
            "step": st.get("step"),
            "loss": st.get("loss"),
            "checkpoint_step": st.get("ckpt_step"),
            "restarts": st.get("restarts"),
        }

    def wait(self, poll_s: float | None = None, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Block until the run finished (through requeues) or failed for good (PipelineError with the cause)."""
        last = None
        while True:
            outcome, why = classify(self.status())
            if why != last:
                self.log(f"train: run {self.run_name}: {why}")
                last = why
            if outcome == DONE:
                return self.train_result()
            if outcome in (FAILED, ABSENT):
                raise PipelineError(f"run {self.run_name} failed: {why}")
            sleep(poll_s or self.cfg.poll_s)

    def evaluate(self) -> dict[str, Any]:
        """`mltrain eval RUN --data ... --json` on the newest checkpoint (or, without eval data, the trainer's
        last val_loss); recorded per checkpoint step."""
        st = self.status() or {}
        ckpt = st.get("ckpt_step")
        prev = self.done("eval")
        if prev and prev.get("checkpoint_step") == ckpt:
            self.log(f"eval: step {ckpt} of run {self.run_name} already evaluated (loss {prev['eval_loss']:.4f})")
            return prev
        if self.cfg.eval.data:
            files = [a for f in self.cfg.eval.data for a in ("--data", self.cfg.path(f))]
            p = self._mltrain("eval", ["eval", self.run_dir, *files, "--json", "--device", self.cfg.eval.device])
            try:
                r = json.loads(p.stdout)
            except ValueError:
                raise PipelineError(f"eval (run {self.run_name}): no JSON result: {last_line(p)}") from None
            result = {"eval_loss": r["loss"], "eval_perplexity": r["perplexity"], "eval_files": self.cfg.eval.data}
            step = r.get("step", ckpt)
        else:
            val = last_val_loss(self.runner.read_text(f"{self.run_dir}/metrics.jsonl") or "")
            if val is None:
                raise PipelineError(f"eval (run {self.run_name}): no eval.data in the pipeline and no val_loss logged")
            step, loss = val
            result = {"eval_loss": loss, "eval_perplexity": _exp(loss), "eval_files": []}
        self.log(f"eval: run {self.run_name} step {step}: loss {result['eval_loss']:.4f}")
        return self._record(
            "eval", {**self._identity(), **result, "step": step, "checkpoint_step": ckpt, "train_loss": st.get("loss")}
        )

    def export(self) -> dict[str, Any]:
        """`mltrain export RUN -o <run>/export/step-N`: the Hugging Face model the registry gets."""
        st = self.status() or {}
        ckpt = st.get("ckpt_step")
        out = f"{self.run_dir}/export/step-{ckpt}"
        prev = self.done("export")
        if prev and prev.get("checkpoint_step") == ckpt and self.runner.exists(f"{out}/config.json"):
            self.log(f"export: step {ckpt} of run {self.run_name} already exported to {out}")
            return prev
        self._mltrain("export", ["export", self.run_dir, "-o", out, "--dtype", self.cfg.export_dtype, "--force"])
        self.log(f"export: run {self.run_name} step {ckpt} -> {out}")
        return self._record("export", {**self._identity(), "export_dir": out, "checkpoint_step": ckpt})

    def register(self) -> dict[str, Any]:
        """The exported model in the MLflow Model Registry, when eval passes the gate (mlflow_registry)."""
        from mltrain.integrations.mlflow_registry import register_version

        prev = self.done("register")
        if prev and prev.get("registered"):
            self.log(f"register: run {self.run_name} already registered as version {prev['version']}; nothing to do")
            return prev
        return self._record("register", register_version(self))

    def run_config_text(self) -> str:
        """The resolved config the run trained with (its config.yaml), '' when not readable."""
        return self.runner.read_text(f"{self.run_dir}/config.yaml") or ""

    def mlflow_run_id(self) -> str | None:
        """The MLflow run the trainer logged its metrics to (telemetry.trackers.MlflowSink's id file)."""
        from mltrain.telemetry.trackers import MlflowSink

        text = self.runner.read_text(f"{self.run_dir}/{MlflowSink.ID_FILE}")
        return text.strip() or None if text else None

    def steps(self) -> list[str]:
        """The steps of this pipeline in order (curate only when the run config has data.curate)."""
        return ["verify", *(["curate"] if has_curate(self.cfg) else []), "prepare", "submit", "eval", "export"] + (
            ["register"] if self.cfg.registry is not None else []
        )

    def run(self, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Every step, in this process (`mltrain pipeline run`, the watch's default starter)."""
        results: dict[str, Any] = {}
        for step in self.steps():
            if step == "submit":
                results["submit"] = self.submit()
                results["train"] = results["submit"] if results["submit"].get("finished") else self.wait(sleep=sleep)
                continue
            results[step] = getattr(self, "evaluate" if step == "eval" else step)()
        return results


def _exp(x: float) -> float:
    import math

    return math.exp(min(x, 700.0))


def last_val_loss(metrics_text: str) -> tuple[int, float] | None:
    """(step, val_loss) of the newest eval record of metrics.jsonl."""
    found = None
    for line in metrics_text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("val_loss"), (int, float)):
            found = (int(rec.get("step", 0)), float(rec["val_loss"]))
    return found


def git_commit(path: str) -> str | None:
    """The commit of the git checkout holding `path` (+'-dirty' with uncommitted changes), None outside one."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        head = subprocess.run(["git", "-C", d, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", d, "status", "--porcelain"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _runner(cfg: PipelineConfig, env: dict[str, str]) -> Runner:
    if cfg.ssh is None:
        return LocalRunner(cwd=str(cfg._base) if cfg._base else None, env=env)
    s = cfg.ssh
    return SshRunner(s.host, s.user, s.port, s.key_file, s.mltrain, s.workdir, env=env, known_hosts=s.known_hosts)


__all__ = ["Pipeline", "PipelineError", "classify", "run_name_for", "last_val_loss", "git_commit"]
