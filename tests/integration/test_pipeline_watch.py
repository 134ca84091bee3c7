"""`mltrain pipeline watch` against the local S3 API server (and its SQS): each dataset version is started
once, also after the watcher restarts, also when two watchers share one state; the starter is injected."""

from __future__ import annotations

import json

import pytest
from moto_fixture import run_cli

from mltrain.integrations.pipeline_watch import WatchState, list_versions, watch


def _upload(s3, bucket: str, version: str, marker: str = "_SUCCESS") -> str:
    s3.put_object(Bucket=bucket, Key=f"corpus/{version}/part-0.jsonl", Body=b'{"text": "x"}\n')
    s3.put_object(Bucket=bucket, Key=f"corpus/{version}/{marker}", Body=b"")
    return f"s3://{bucket}/corpus/{version}/"


def _watch(s3, bucket, state, started, **kw):
    return watch(f"s3://{bucket}/corpus/", started.append, state, client=s3, once=True, log=lambda m: None, **kw)


def test_each_version_starts_once_across_restarts(s3, bucket, tmp_path):
    v1 = _upload(s3, bucket, "v1")
    s3.put_object(Bucket=bucket, Key="corpus/v2/part-0.jsonl", Body=b"{}\n")  # no marker yet: still uploading
    started: list[str] = []
    assert _watch(s3, bucket, WatchState(tmp_path / "w.json"), started) == [v1]
    # the watcher restarts (a new process: only the files remain); the upload of v2 finishes with its manifest
    v2 = _upload(s3, bucket, "v2", marker=".mltrain-manifest.json")
    assert _watch(s3, bucket, WatchState(tmp_path / "w.json"), started) == [v2]
    assert _watch(s3, bucket, WatchState(tmp_path / "w.json"), started) == []
    assert started == [v1, v2]
    versions = json.loads((tmp_path / "w.json").read_text())["versions"]
    assert {u: r["state"] for u, r in versions.items()} == {v1: "started", v2: "started"}
    assert list_versions(s3, f"s3://{bucket}/corpus/", ("_SUCCESS",)) == [v1]


def test_two_watchers_on_one_state_start_a_version_once(s3, bucket, tmp_path):
    v1 = _upload(s3, bucket, "v1")
    a, b = WatchState(tmp_path / "w.json"), WatchState(tmp_path / "w.json")
    assert [a.claim(v1), b.claim(v1)] == [True, False]


def test_a_failed_start_is_recorded_and_not_retried(s3, bucket, tmp_path):
    v1 = _upload(s3, bucket, "v1")
    state = WatchState(tmp_path / "w.json")
    calls: list[str] = []

    def broken(uri: str) -> None:
        calls.append(uri)
        raise RuntimeError("cannot reach the head node")

    assert watch(f"s3://{bucket}/corpus/", broken, state, client=s3, once=True, log=lambda m: None) == []
    assert watch(f"s3://{bucket}/corpus/", broken, state, client=s3, once=True, log=lambda m: None) == []
    assert calls == [v1]
    assert state.load()["versions"][v1]["state"] == "start_failed"


def test_versions_from_s3_event_notifications_on_sqs(s3, bucket, s3_env, tmp_path):
    import boto3

    sqs = boto3.client("sqs", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    queue = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    v3 = _upload(s3, bucket, "v3")
    event = {"Records": [{"eventName": "ObjectCreated:Put",
                          "s3": {"bucket": {"name": bucket}, "object": {"key": "corpus/v3/_SUCCESS"}}}]}  # fmt: skip
    other = {"Records": [{"s3": {"bucket": {"name": bucket}, "object": {"key": "corpus/v3/part-0.jsonl"}}}]}
    for body in (event, other, event):  # S3 delivers at least once: the same event may come twice
        sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(body))
    started: list[str] = []
    state = WatchState(tmp_path / "w.json")
    for _ in range(2):
        watch(
            f"s3://{bucket}/corpus/",
            started.append,
            state,
            sqs=sqs,
            queue_url=queue,
            sqs_wait_s=0,
            once=True,
            log=lambda m: None,
        )
    assert started == [v3]
    assert sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=0).get("Messages") is None  # all consumed


def test_cli_skip_existing_marks_versions_without_starting_them(s3, bucket, s3_env, tmp_path):
    v1 = _upload(s3, bucket, "v1")
    pipe = tmp_path / "pipeline.yaml"
    pipe.write_text(f"run: run.yaml\ncluster: local.yaml\nendpoint_url: {s3_env['AWS_ENDPOINT_URL']}\n")
    state = tmp_path / "state.json"
    r = run_cli(s3_env, "pipeline", "watch", f"s3://{bucket}/corpus/", "--run", str(pipe), "--state", str(state),
                "--once", "--skip-existing")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "skipped (--skip-existing)" in r.stdout
    assert json.loads(state.read_text())["versions"][v1]["state"] == "skipped"
    assert not (tmp_path / "state.json.logs").exists()  # nothing was started


@pytest.mark.parametrize("bad", ["run: r.yaml\n", "run: r.yaml\ncluster: c.yaml\nnodes: 0\n", "- a\n"])
def test_cli_bad_pipeline_file_is_one_line(bad, s3_env, tmp_path):
    pipe = tmp_path / "pipeline.yaml"
    pipe.write_text(bad)
    r = run_cli(s3_env, "pipeline", "watch", "s3://b/corpus/", "--run", str(pipe), "--once")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "pipeline.yaml" in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
