"""checkpoint.storage: s3://... on moto's S3 server: DCP through s3torchconnector, the COMMITTED marker
written last with every object's size and xxh3, and resume refusing a step whose objects were cut short
or changed, one line each, as on a file system. The manager in one process; `mltrain train` on two ranks."""

from __future__ import annotations

import json

import pytest
import torch

from mltrain.errors import CheckpointError
from mltrain.train.s3_checkpoint import S3CheckpointManager

pytest.importorskip("s3torchconnector")


def state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"w": torch.randn(64, 33, generator=g), "b": torch.arange(7)},
        "optim": {"m": torch.rand(5, generator=g)},
    }


def blank() -> dict:
    return {"model": {"w": torch.zeros(64, 33), "b": torch.zeros(7, dtype=torch.long)}, "optim": {"m": torch.zeros(5)}}


def manager(tmp_path, url, lines, keep_last=2):
    return S3CheckpointManager(url, tmp_path / "run", keep_last, 0, 1, warn=lines.append, info=lambda m: None)


SHAPES = {"w": (64, 33), "b": (7,)}


def test_save_resume_bit_for_bit_and_damaged_steps_are_refused(tmp_path, s3_env, s3, bucket):
    url = f"s3://{bucket}/runs/a/ckpt"
    lines: list[str] = []
    m = manager(tmp_path, url, lines)
    for step in (3, 6, 9):
        assert m.save(step, state(step), {"step": step, "loader": {"pos": step}}, {"rng": step})
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/a/ckpt/")["Contents"]}
    assert not any("step_00000003" in k for k in keys)  # keep_last=2 applies on S3
    marker = json.loads(s3.get_object(Bucket=bucket, Key="runs/a/ckpt/step_00000009/COMMITTED")["Body"].read())
    assert marker["hash"] == "xxh3_128" and {"trainer_state.json", "rank_00000.pt", ".metadata"} <= set(marker["files"])
    assert {f"runs/a/ckpt/step_00000009/{rel}" for rel in marker["files"]} | {
        "runs/a/ckpt/step_00000009/COMMITTED"
    } == {k for k in keys if "step_00000009" in k}

    # a new process: resume the newest, bit for bit
    fresh = manager(tmp_path, url, lines)
    step, path = fresh.latest()
    assert (step, str(path)) == (9, f"{url}/step_00000009") and lines == []
    got = blank()
    ts = fresh.load(path, got, SHAPES)
    want = state(9)
    assert all(torch.equal(got[k][n], want[k][n]) for k in want for n in want[k])
    assert ts["step"] == 9 and ts["loader"] == {"pos": 9} and ts["_rank_state"] == {"rng": 9}

    # same size, other bytes: refused with one line naming the object; the older step is used
    data_key = next(f"runs/a/ckpt/step_00000009/{r}" for r in marker["files"] if r.endswith(".distcp"))
    body = bytearray(s3.get_object(Bucket=bucket, Key=data_key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=data_key, Body=bytes(body))
    step, path = fresh.latest()
    assert step == 6
    assert lines == [
        f"skipping checkpoint {url}/step_00000009: file {data_key.rsplit('/', 1)[1]} does not match its xxh3_128 checksum"
    ]
    # truncated: refused by its size before any byte is read
    lines.clear()
    key6 = f"runs/a/ckpt/step_00000006/{data_key.rsplit('/', 1)[1]}"
    body6 = s3.get_object(Bucket=bucket, Key=key6)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key6, Body=body6[:100])
    assert fresh.latest() is None
    assert lines[1] == (
        f"skipping checkpoint {url}/step_00000006: file {data_key.rsplit('/', 1)[1]} has 100 bytes, "
        f"marker says {len(body6)}"
    )


def test_a_save_cut_short_is_not_resumed_and_a_new_save_of_that_step_replaces_it(tmp_path, s3_env, s3, bucket):
    url = f"s3://{bucket}/cut"
    lines: list[str] = []
    m = manager(tmp_path, url, lines)
    assert m.save(2, state(2), {"step": 2}, {})
    assert m.save(4, state(4), {"step": 4}, {})
    s3.delete_object(Bucket=bucket, Key="cut/step_00000004/COMMITTED")  # killed before the marker
    step, _ = m.latest()
    assert step == 2 and lines == [
        f"skipping checkpoint {url}/step_00000004: no COMMITTED marker (the save did not finish)"
    ]
    lines.clear()
    assert m.save(4, state(40), {"step": 4}, {})  # the resumed run reaches step 4 again
    assert lines == [f"replaced {url}/step_00000004 (written by an earlier attempt at this step) with this save"]
    step, path = m.latest()
    got = blank()
    m.load(path, got, SHAPES)
    assert step == 4 and torch.equal(got["model"]["w"], state(40)["model"]["w"])


def test_a_background_save_commits_on_wait_and_resumes(tmp_path, s3_env, s3, bucket):
    lines: list[str] = []
    m = S3CheckpointManager(f"s3://{bucket}/bg", tmp_path / "run", 2, 0, 1, async_save=True, warn=lines.append,
                            info=lambda m: None)  # fmt: skip
    assert m.save(5, state(5), {"step": 5}, {"rng": 5})
    assert m.wait() and lines == []
    step, path = m.latest()
    got = blank()
    assert step == 5 and m.load(path, got, SHAPES)["_rank_state"] == {"rng": 5}
    assert torch.equal(got["model"]["w"], state(5)["model"]["w"])


def test_a_model_that_does_not_fit_is_refused_before_loading(tmp_path, s3_env, bucket):
    from mltrain.errors import CheckpointError

    m = manager(tmp_path, f"s3://{bucket}/fit", [])
    assert m.save(1, state(1), {"step": 1}, {})
    _, path = m.latest()
    with pytest.raises(CheckpointError, match=r"does not fit the model config: w: checkpoint \[64, 33\] vs model"):
        m.load(path, blank(), {"w": (64, 34), "b": (7,)})


def test_each_failure_keeps_the_previous_step_with_one_line(tmp_path, s3_env, s3, bucket, monkeypatch):
    """The S3 side of the save/commit protocol, line for line: where a step went, a failed listing before the
    write, a failed write, a failed background write and a failed marker each warn once, leave nothing of the
    step behind and keep the previous step."""
    from concurrent.futures import Future

    import torch.distributed.checkpoint as dcp

    url = f"s3://{bucket}/fail"
    lines: list[str] = []
    said: list[str] = []
    m = S3CheckpointManager(url, tmp_path / "run", 2, 0, 1, warn=lines.append, info=said.append)
    assert m.save(1, state(1), {"step": 1}, {})
    assert len(said) == 1 and said[0].startswith(f"checkpoint step 1 saved to {url}/step_00000001 in ")
    marker = json.loads(s3.get_object(Bucket=bucket, Key="fail/step_00000001/COMMITTED")["Body"].read())
    assert list(marker) == ["files", "total_bytes", "hash", "step", "world_size", "time"]  # no hashing time

    def objects(step: int) -> list[str]:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"fail/step_{step:08d}/")
        return [o["Key"] for o in listed.get("Contents", [])]

    def cannot_list() -> list:
        raise CheckpointError("s3://b/fail: listing refused")

    with monkeypatch.context() as mp:
        mp.setattr(m.store, "steps", cannot_list)
        assert not m.save(2, state(2), {"step": 2}, {})
    assert lines == ["checkpoint at step 2 failed (s3://b/fail: listing refused); the previous checkpoint is kept"]
    assert objects(2) == []

    def writer_dies(*a, **k):
        raise RuntimeError("writer died")

    lines.clear()
    with monkeypatch.context() as mp:
        mp.setattr(dcp, "save", writer_dies)
        assert not m.save(3, state(3), {"step": 3}, {})
    assert lines == ["checkpoint at step 3 failed (RuntimeError: writer died); the previous checkpoint is kept"]
    assert objects(3) == []  # its rank object was written before DCP failed: dropped

    lines.clear()
    real_put = m.store.put

    def no_marker(key: str, data: bytes) -> None:
        if key.endswith("/COMMITTED"):
            raise CheckpointError(f"s3://{bucket}/{key}: access denied")
        real_put(key, data)

    with monkeypatch.context() as mp:
        mp.setattr(m.store, "put", no_marker)
        assert not m.save(4, state(4), {"step": 4}, {})
    assert lines == [
        f"checkpoint step_00000004 could not be committed (s3://{bucket}/fail/step_00000004/COMMITTED: access "
        "denied); the previous checkpoint is kept"
    ]
    assert objects(4) == []

    lines.clear()
    said.clear()
    m.async_save = True
    failed: Future = Future()
    failed.set_exception(OSError("lost the bucket"))
    with monkeypatch.context() as mp:
        mp.setattr(dcp, "async_save", lambda *a, **k: failed)
        assert m.save(5, state(5), {"step": 5}, {})
    assert len(said) == 1 and said[0].endswith("s, writing to S3 in background")
    assert not m.wait()
    assert lines == [
        "background checkpoint step_00000005 failed (OSError: lost the bucket); the previous checkpoint is kept"
    ]
    assert objects(5) == []
    assert [(s, str(p)) for s, p in [m.latest()]] == [(1, f"{url}/step_00000001")]


@pytest.mark.slow
def test_training_on_s3_storage_resumes_step_for_step_past_a_tampered_checkpoint(
    tmp_path, tiny_data_dir, s3_env, s3, bucket, capsys
):
    """`mltrain train --nproc 2` with checkpoint.storage on S3: each rank streams its shards to S3 and
    rank 0 commits the marker from the gathered hashes; nothing under <run>/checkpoints. The newest step
    is tampered with, so the second run (both ranks verifying a share each) names it, resumes from the
    one before and reproduces the first run's losses exactly. Export, eval and sample read the run's weights from S3 by
    the same rules (the newest valid step, or --step; a damaged one named and skipped)."""
    import subprocess

    from tests.helpers import mltrain_cmd, tiny_run_config, write_config

    from mltrain.train.metrics import read_metrics

    storage = f"s3://{bucket}/ckpt/run"
    cfg = tiny_run_config(tmp_path, tiny_data_dir, "s3st")
    cfg["checkpoint"] = {"every_steps": 3, "keep_last": 2, "storage": storage}
    cfg["train"]["parallel"] = "fsdp"  # each rank writes its own shards
    cfg_path = write_config(tmp_path / "s3st.yaml", cfg)
    run_dir = tmp_path / "runs" / "s3st"

    def train() -> subprocess.CompletedProcess:
        env = {k: v for k, v in s3_env.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT")}
        cmd = mltrain_cmd("train", str(cfg_path), "--nproc", "2")
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)

    r1 = train()
    assert r1.returncode == 0, r1.stdout[-3000:] + r1.stderr[-3000:]
    ref = {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}
    assert not list((run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").exists() else True
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="ckpt/run/step_00000008/")["Contents"]]
    marker = json.loads(s3.get_object(Bucket=bucket, Key="ckpt/run/step_00000008/COMMITTED")["Body"].read())
    listed = set(marker["files"])
    assert {"rank_00000.pt", "rank_00001.pt", "__0_0.distcp", "__1_0.distcp"} <= listed, listed  # both ranks' hashes
    assert {k.rsplit("/", 1)[1] for k in keys} == listed | {"COMMITTED"} and marker["world_size"] == 2
    distcp = next(k for k in keys if k.endswith(".distcp"))
    body = bytearray(s3.get_object(Bucket=bucket, Key=distcp)["Body"].read())
    body[-10] ^= 1
    s3.put_object(Bucket=bucket, Key=distcp, Body=bytes(body))

    r2 = train()
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    out = r2.stdout + r2.stderr
    assert (
        f"skipping checkpoint {storage}/step_00000008: file {distcp.rsplit('/', 1)[1]} does not match its "
        "xxh3_128 checksum" in out
    ), out[-3000:]
    assert f"resumed from {storage}/step_00000006 (step 6)" in out, out[-3000:]
    again = [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["kind"] == "train"][len(ref) :]
    assert again == [(7, ref[7]), (8, ref[8])]  # the second run's records: steps 7 and 8, same losses
    # the run dir records the newest S3 commit: the batch script's "new checkpoint since the requeue?" and
    # status see the run's progress without listing S3
    from mltrain.checkpoint_rule import latest_committed_step
    from mltrain.runstats import last_checkpoint

    assert latest_committed_step(run_dir) == 8 and last_checkpoint(run_dir)[0] == 8

    from mltrain.infer.export import export_run
    from mltrain.infer.run_model import load_run_model

    newest, six = load_run_model(run_dir, device="cpu"), load_run_model(run_dir, step=6, device="cpu")
    assert (newest.step, newest.checkpoint) == (8, f"{storage}/step_00000008")
    assert (six.step, six.checkpoint) == (6, f"{storage}/step_00000006")
    w8, w6 = newest.model.state_dict(), six.model.state_dict()
    assert any(not torch.equal(w8[k], w6[k]) for k in w8)  # two different steps were read
    capsys.readouterr()
    s3.put_object(Bucket=bucket, Key=distcp, Body=bytes(body))  # step 8 damaged again
    fallback = load_run_model(run_dir, device="cpu")
    assert fallback.step == 6 and all(torch.equal(fallback.model.state_dict()[k], w6[k]) for k in w6)
    assert f"skipping checkpoint {storage}/step_00000008: file" in capsys.readouterr().err
    out = export_run(run_dir, tmp_path / "hf", dtype="fp32")
    assert (out / "model.safetensors").is_file()
    assert f"exporting step 6 (the newest valid checkpoint) from {storage}/step_00000006" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match=r"no committed checkpoint for step 3 \(checkpoint.storage\); have 6, 8"):
        load_run_model(run_dir, step=3, device="cpu")
