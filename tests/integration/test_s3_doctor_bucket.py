"""`mltrain doctor --bucket` is an S3-taking command too: a bad bucket name or endpoint is one row with one
line, and no detail text can break the table (botocore's regexes hold rich markup look-alikes like `[/:]`)."""

from __future__ import annotations

from moto_fixture import run_cli as cli

from mltrain.ops.checks import FAIL, Check, print_table
from mltrain.ops.doctor import check_s3


def test_bad_bucket_name_and_endpoint_are_one_line_rows(s3_env, monkeypatch):
    (row,) = check_s3("s3://Bad_Bucket!/x")
    assert row.status == FAIL and "'Bad_Bucket!' is not a valid bucket name" in row.detail
    assert "regex" not in row.detail and "\n" not in row.detail
    monkeypatch.setenv("AWS_ENDPOINT_URL", "notaurl")
    (row,) = check_s3("s3://fine-bucket")
    assert row.status == FAIL and "'notaurl' is not an endpoint URL" in row.detail


def test_reachable_and_missing_buckets(s3_env, bucket):
    assert [c.status for c in check_s3(f"s3://{bucket}/p")] == ["PASS"]
    (row,) = check_s3("s3://no-such-bucket-d1")
    assert row.status == FAIL and "does not exist" in row.detail and "\n" not in row.detail


def test_table_prints_details_with_brackets_as_text(capsys):
    from rich.console import Console

    print_table([Check("s3", FAIL, 'regex "^arn:[/:]a[b]$"', "see [docs]")], "t", Console(width=200))
    out = capsys.readouterr().out
    assert '"^arn:[/:]a[b]$"' in out and "see [docs]" in out


def test_doctor_cli_with_a_bad_bucket_is_not_a_traceback(s3_env):
    """--json: the CLI's console is created once per process (an earlier in-process test fixes its width), so the
    table may wrap the detail; the JSON rows carry it whole."""
    import json

    r = cli(s3_env, "doctor", "--bucket", "s3://Bad_Bucket!", "--json")
    assert "Traceback" not in r.stderr and "MarkupError" not in r.stderr
    rows = {c["name"]: c for c in json.loads(r.stdout)["checks"]} if r.stdout.strip().startswith("{") else None
    assert rows is not None, r.stdout[-2000:]
    assert rows["s3"]["status"] == "FAIL" and "not a valid bucket name" in rows["s3"]["detail"]
