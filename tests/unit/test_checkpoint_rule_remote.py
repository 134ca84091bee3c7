"""checkpoint.storage on S3: the run dir's record of the newest S3 commit counts as the run's progress for
the readers that look only at the run dir (the batch script's preemption streak, status)."""

from __future__ import annotations

import json

from mltrain.checkpoint_rule import MARKER, REMOTE_COMMIT, latest_committed_step, remote_commit, step_dir_name


def test_the_newest_of_local_and_remote_commits_is_the_runs_step(tmp_path):
    assert latest_committed_step(tmp_path) is None
    local = tmp_path / "checkpoints" / step_dir_name(3)
    local.mkdir(parents=True)
    (local / MARKER).write_text("{}")
    assert latest_committed_step(tmp_path) == 3
    (tmp_path / "control").mkdir()
    (tmp_path / REMOTE_COMMIT).write_text(json.dumps({"step": 5, "url": "s3://b/p/step_00000005", "time": 1.0}))
    assert latest_committed_step(tmp_path) == 5 and remote_commit(tmp_path) == (5, 1.0)
    (tmp_path / REMOTE_COMMIT).write_text("{not json")  # a torn record is no progress, never an error
    assert latest_committed_step(tmp_path) == 3 and remote_commit(tmp_path) is None
