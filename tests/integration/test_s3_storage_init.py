"""`mltrain storage init` against moto's S3 server: buckets, versioning, lifecycle; idempotent."""

from __future__ import annotations

import json

import yaml
from moto_fixture import run_cli as cli


def _cluster(tmp_path, region: str, data: str, ckpt: str):
    spec = {
        "name": "c1",
        "instance_type": "p5.48xlarge",
        "nodes": 2,
        "gpus_per_node": 8,
        "aws": {
            "region": region,
            "subnet_id": "subnet-0123",
            "fsx": {"s3_import_path": data, "s3_export_path": ckpt},
        },
    }
    p = tmp_path / "cluster.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_storage_init_creates_configures_and_is_idempotent(tmp_path, s3_env, s3):
    path = _cluster(tmp_path, "eu-west-1", "s3://mlt-data-x1/corpus", "s3://mlt-ckpt-x1/runs")
    s3.create_bucket(Bucket="mlt-ckpt-x1", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    user_rule = {"ID": "user-rule", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 90}}
    s3.put_bucket_lifecycle_configuration(Bucket="mlt-ckpt-x1", LifecycleConfiguration={"Rules": [user_rule]})

    r = cli(s3_env, "storage", "init", str(path), "--abort-multipart-days", "3", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    done = {a["bucket"]: a for a in json.loads(r.stdout)}
    assert done["mlt-data-x1"]["actions"][0] == "created in eu-west-1"
    assert done["mlt-ckpt-x1"]["actions"][:2] == ["exists", "versioning turned on"]
    assert s3.get_bucket_location(Bucket="mlt-data-x1")["LocationConstraint"] == "eu-west-1"
    assert s3.get_bucket_versioning(Bucket="mlt-ckpt-x1")["Status"] == "Enabled"
    assert "Status" not in s3.get_bucket_versioning(Bucket="mlt-data-x1")
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket="mlt-ckpt-x1")["Rules"]}
    assert rules["mltrain-abort-incomplete-multipart"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 3
    assert "mltrain-expire-noncurrent-versions" in rules and "user-rule" in rules  # the user's rule is kept
    data_rules = s3.get_bucket_lifecycle_configuration(Bucket="mlt-data-x1")["Rules"]
    assert [r["ID"] for r in data_rules] == ["mltrain-abort-incomplete-multipart"]

    again = cli(s3_env, "storage", "init", str(path), "--abort-multipart-days", "3")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "versioning already on" in again.stdout and again.stdout.count("lifecycle rules already set") == 2
    assert "created" not in again.stdout


def test_storage_init_without_buckets_is_one_clear_line(tmp_path, s3_env):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "c", "instance_type": "x", "nodes": 1, "gpus_per_node": 0}))
    r = cli(s3_env, "storage", "init", str(path))
    assert r.returncode != 0 and "no aws: section" in r.stderr and len(r.stderr.strip().splitlines()) == 1
