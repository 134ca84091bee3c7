"""What a transfer says when it is done: one rate (the progress bar's), true verbs, and exactly what
was checked and what was not. Pure functions: no S3."""

from __future__ import annotations

import time

from mltrain.storage.progress import ByteProgress, RateColumn, byte_progress
from mltrain.storage.transfer import TransferSummary, is_our_temp

MiB = 1 << 20


def test_rate_is_moved_bytes_over_the_bars_interval():
    s = TransferSummary("upload", "a", "s3://b/p", bytes_transferred=30 * MiB, transfer_seconds=2.0, seconds=5.0)
    assert s.mib_per_s == 15.0
    assert s.as_dict()["mib_per_s"] == 15.0
    assert TransferSummary("upload", "a", "b", bytes_transferred=5).as_dict()["mib_per_s"] is None
    assert (
        round(TransferSummary("d", "a", "b", bytes_transferred=MiB, transfer_seconds=3.0).as_dict()["mib_per_s"], 9)
        == 0.33
    )


def test_upload_line():
    s = TransferSummary(
        "upload", "a", "s3://b/p", files=5, transferred=3, skipped=2, bytes_transferred=12 * MiB,
        transfer_seconds=1.5, seconds=2.25, aborted_multipart_uploads=1, deleted=["x", "y"],
    )  # fmt: skip
    assert s.line() == (
        "upload: 3 file(s) uploaded, 2 already there; 12.0 MiB in 1.5s (8.0 MiB/s), 2.2s in all; "
        "checksums verified; 2 deleted; 1 stale multipart upload(s) aborted"
    )


def test_download_line_says_what_was_kept_skipped_and_checked_by_size_only():
    s = TransferSummary(
        "download", "s3://b/p", "d", transferred=1, skipped=0, recovered=2, bytes_transferred=MiB // 2,
        transfer_seconds=0.5, seconds=1.0, unchecked=["u.bin"], unlisted=[f"e{i}" for i in range(12)],
    )  # fmt: skip
    assert s.line() == (
        "download: 1 file(s) downloaded, 2 kept from an interrupted download, 0 already there; "
        "0.5 MiB in 0.5s (1.0 MiB/s), 1.0s in all; checksums verified except 1 file(s) checked by size only "
        "(S3 stores no whole-object checksum for them): u.bin; 12 object(s) not in the manifest skipped: "
        "e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, ... (2 more) (--unlisted downloads them)"
    )
    assert "sent" not in s.line()


def test_no_time_no_rate():
    assert "(0.0 MiB/s)" in TransferSummary("upload", "a", "b").line()


def test_counter_separates_moved_from_skipped_and_freezes_its_clock():
    with byte_progress("x", None) as bar:
        bar.skip(100 * MiB)
        bar.advance(3 * MiB)
        bar.advance(-MiB)  # s3transfer rewinds a retried part
        bar.advance(MiB)
        time.sleep(0.01)
    assert (bar.moved, bar.skipped) == (3 * MiB, 100 * MiB)
    frozen = bar.seconds
    time.sleep(0.01)
    assert bar.seconds == frozen > 0
    assert bar.mib_per_s() == 3 / frozen
    assert RateColumn(bar).render(None).plain == f"{3 / frozen:.1f} MiB/s"
    assert RateColumn(ByteProgress()).render(None).plain == ""  # nothing moved yet: no figure


def test_our_temp_names():
    assert is_our_temp(".a.1.mltrain-tmp") and is_our_temp(".a.b.c.123.mltrain-tmp.abcdefAB")
    assert not is_our_temp(".a.1.mltrain-tmp.abcdefA")  # 7 digits: not s3transfer's suffix
    assert not is_our_temp(".a.1.mltrain-tmp.abcdefABC")
    assert not is_our_temp("a.1.mltrain-tmp") and not is_our_temp("..1.mltrain-tmp")
    assert not is_our_temp(".a.mltrain-tmp") and not is_our_temp(".a.1.mltrain-tmpx")


def test_the_line_names_the_engine_that_ran():
    s = TransferSummary("upload", "a", "s3://b/p", transferred=1, transfer_seconds=1.0, seconds=1.0, engine="crt")
    assert ", 1.0s in all, crt engine; checksums verified" in s.line()
    assert " engine" not in TransferSummary("upload", "a", "s3://b/p").line()
