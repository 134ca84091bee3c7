"""Stop requests: a stop file older than the start is a leftover; the file says who asked."""

from __future__ import annotations

import os
import time

from mltrain.train.faults import StopRequest, remove_stale_stop, write_stop_request


def test_stale_stop_removed_fresh_kept(tmp_path):
    path = write_stop_request(tmp_path, "mltrain stop")
    past = time.time() - 30
    os.utime(path, (past, past))
    assert remove_stale_stop(tmp_path, started=time.time()) == past
    assert not path.exists()
    write_stop_request(tmp_path, "SIGINT")
    assert remove_stale_stop(tmp_path, started=time.time() - 30) is None  # written after the start
    assert path.exists()


def test_why_names_the_requester_and_consume_removes_the_file(tmp_path, keep_signal_handlers):
    stop = StopRequest(tmp_path, announce=False)
    assert not stop.requested(check_file=True)
    write_stop_request(tmp_path, "SIGINT")
    assert stop.requested(check_file=True) and not stop.requested(check_file=False)
    assert stop.why() == "SIGINT"
    (tmp_path / "control" / "stop").write_text("")  # `touch` from the Slurm batch script
    assert stop.why() == "stop file"
    stop.consume()
    assert not stop.requested(check_file=True)
    assert stop.why() == "a signal to another rank"
