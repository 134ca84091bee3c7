"""Checkpoint checks that mutation testing found unchecked: the checksum itself (against an independent
xxh3), who hashes which file, each reason a checkpoint is refused, the disk-full line, the messages
of require_checkpoint / check_model_fits, pruning and the background save."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import xxhash
from tests.unit.test_checkpoint import make, manager, save

from mltrain.checkpoint_rule import step_dir_name
from mltrain.errors import CheckpointError
from mltrain.train import checkpoint as C
from mltrain.train import local_checkpoint as L

_START_CWD = os.getcwd()  # where the test run started (the spawned rank of the two-rank test starts there)


@pytest.fixture(autouse=True)
def _own_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test in an empty working directory: a path that lost its directory (a bug) then names
    nothing, instead of whatever an earlier test left in the shared working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)


def test_file_xxh3_is_the_xxh3_128_of_every_byte(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 + 7)
    p = tmp_path / "f"
    p.write_bytes(data)
    want = xxhash.xxh3_128(data).hexdigest()
    assert C.file_xxh3(p) == want
    assert C.file_xxh3(p, chunk_bytes=1000) == want  # several chunks give the same hash


def test_file_xxh3_default_chunk_reads_whole_large_files(tmp_path: Path) -> None:
    data = os.urandom((1 << 23) + 5)  # just over one default chunk
    p = tmp_path / "f"
    p.write_bytes(data)
    assert C.file_xxh3(p) == xxhash.xxh3_128(data).hexdigest()


@pytest.mark.parametrize(
    "rel,world,owner",
    [
        ("__0_0.distcp", 4, 0),
        ("__3_0.distcp", 4, 3),
        ("__12_1.distcp", 16, 12),
        ("rank_00002.pt", 4, 2),
        ("rank_00002.pt.bak", 4, 0),
        ("x/rank_00002.pt", 4, 0),
        ("__5_0.distcp", 4, 0),  # a rank that is not there any more: rank 0 hashes it
        ("rank_00004.pt", 4, 0),
        (".metadata", 4, 0),
        ("trainer_state.json", 4, 0),
    ],
)
def test_owner_of_each_file(rel: str, world: int, owner: int) -> None:
    assert C._owner(rel, world) == owner


def test_describe_failure_says_disk_full_only_when_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    err = OSError("unexpected pos 704 vs 598\nwrite failed")

    class Usage:
        def __init__(self, free: int) -> None:
            self.free = free

    monkeypatch.setattr(C.shutil, "disk_usage", lambda where: Usage(10 * 2**20 + 2**19))
    assert C._describe_failure(err, tmp_path) == (
        f"disk full: 10.5 MiB free on the file system of {tmp_path} (OSError: write failed)"
    )
    monkeypatch.setattr(C.shutil, "disk_usage", lambda where: Usage(64 * 2**20))
    assert C._describe_failure(err, tmp_path) == "OSError: write failed"
    monkeypatch.setattr(C.shutil, "disk_usage", lambda where: Usage(64 * 2**20 - 1))
    assert C._describe_failure(err, tmp_path).startswith("disk full: 64.0 MiB free")
    assert C._describe_failure(RuntimeError(""), tmp_path).startswith("disk full:")

    def gone(where: Path) -> None:
        raise OSError("no such file system")

    monkeypatch.setattr(C.shutil, "disk_usage", gone)
    assert C._describe_failure(err, tmp_path) == "OSError: write failed"
    assert C._describe_failure(ValueError(""), tmp_path) == "ValueError:"


def test_fsync_dir_syncs_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    C._fsync_dir(tmp_path)
    assert len(synced) == 1
    C._fsync_dir(tmp_path / "missing")  # nothing to sync, no error
    assert len(synced) == 1


def _committed(tmp_path: Path, step: int = 1) -> Path:
    m, opt = make()
    assert save(manager(tmp_path), step, m, opt)
    return tmp_path / "checkpoints" / step_dir_name(step)


@pytest.mark.parametrize(
    "marker,reason",
    [
        ("not json", "unreadable COMMITTED marker (Expecting value"),
        ('{"nofiles": 1}', "unreadable COMMITTED marker ('files')"),
        ('{"files": [1]}', "unreadable COMMITTED marker ('files' is not a mapping)"),
        ("[1]", "unreadable COMMITTED marker (list indices must be integers"),
    ],
)
def test_unreadable_marker_reasons(tmp_path: Path, marker: str, reason: str) -> None:
    ck = _committed(tmp_path)
    (ck / C.MARKER).write_text(marker)
    assert C.check_checkpoint(ck).startswith(reason)


def test_reasons_for_missing_and_resized_files(tmp_path: Path) -> None:
    ck = _committed(tmp_path)
    assert C.check_checkpoint(ck / "nothing-here") == "no COMMITTED marker (the save did not finish)"
    (ck / "rank_00000.pt").unlink()
    assert C.check_checkpoint(ck) == "missing file rank_00000.pt"
    ck = _committed(tmp_path, 2)
    size = (ck / "trainer_state.json").stat().st_size
    (ck / "trainer_state.json").write_text("{}")
    assert C.check_checkpoint(ck, deep=False) == f"file trainer_state.json has 2 bytes, marker says {size}"


def test_shallow_check_skips_checksums_and_shares_split_the_reading(tmp_path: Path) -> None:
    ck = _committed(tmp_path)
    files = sorted(json.loads((ck / C.MARKER).read_text())["files"])
    victim = files[1]  # damaged in place, same size
    raw = bytearray((ck / victim).read_bytes())
    raw[0] ^= 0xFF
    (ck / victim).write_bytes(bytes(raw))
    bad = f"file {victim} does not match its xxh3_128 checksum"
    assert C.check_checkpoint(ck) == bad
    assert C.check_checkpoint(ck, deep=False) is None
    assert C.check_checkpoint(ck, share=(1, 2)) == bad  # files 1, 3, ... are this share's
    assert C.check_checkpoint(ck, share=(0, 2)) is None
    assert C.check_checkpoint(ck, share=(1, len(files))) == bad
    assert C.check_checkpoint(ck, share=(0, len(files))) is None


def test_legacy_sha256_marker_is_still_verified(tmp_path: Path) -> None:
    from mltrain.fsutil import file_sha256

    ck = _committed(tmp_path)
    marker = json.loads((ck / C.MARKER).read_text())
    marker["files"] = {rel: {"size": e["size"], "sha256": file_sha256(ck / rel)} for rel, e in marker["files"].items()}
    (ck / C.MARKER).write_text(json.dumps(marker))
    assert C.check_checkpoint(ck) is None
    (ck / "trainer_state.json").write_text((ck / "trainer_state.json").read_text().replace("1", "2"))
    assert C.check_checkpoint(ck) == "file trainer_state.json does not match its sha256"


def test_step_dirs_ignore_files_and_other_names(tmp_path: Path) -> None:
    assert C._step_dirs(tmp_path) == []
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "step_00000003").mkdir()
    (root / "step_00000001").mkdir()
    (root / "step_00000002").write_text("a file")
    (root / "step_00000004.tmp").mkdir()
    (root / "step_5").mkdir()
    assert C._step_dirs(tmp_path) == [(1, root / "step_00000001"), (3, root / "step_00000003")]


def test_find_checkpoints_warns_with_the_path_and_reason(tmp_path: Path) -> None:
    ck = _committed(tmp_path)
    (ck / C.MARKER).unlink()
    said: list[str] = []
    assert C.find_checkpoints(tmp_path, warn=said.append) == []
    assert said == [f"skipping checkpoint {ck}: no COMMITTED marker (the save did not finish)"]
    assert C.find_checkpoints(tmp_path) == []  # no warn: quiet


def test_pick_and_require_a_step(tmp_path: Path) -> None:
    m, opt = make()
    mgr = manager(tmp_path)
    for s in (1, 2, 3):
        save(mgr, s, m, opt)
    said: list[str] = []
    root = tmp_path / "checkpoints"
    assert C.pick_checkpoint(tmp_path, said.append) == (3, root / "step_00000003")
    assert C.pick_checkpoint(tmp_path, said.append, step=2) == (2, root / "step_00000002")
    assert C.require_checkpoint(tmp_path, said.append, step=1) == (1, root / "step_00000001")
    assert said == []
    (root / "step_00000003" / C.MARKER).unlink()
    assert C.require_checkpoint(tmp_path, said.append) == (2, root / "step_00000002")
    assert said == ["skipping checkpoint step_00000003: no COMMITTED marker (the save did not finish)"]
    with pytest.raises(CheckpointError) as e:
        C.require_checkpoint(tmp_path, said.append, step=7)
    assert str(e.value) == f"{tmp_path}/checkpoints: no committed checkpoint for step 7; have 1, 2"


def test_require_without_any_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as e:
        C.require_checkpoint(tmp_path, print)
    assert str(e.value) == f"{tmp_path}/checkpoints: no committed checkpoint (train the run first)"
    with pytest.raises(CheckpointError) as e:
        C.require_checkpoint(tmp_path, print, step=3)
    assert str(e.value) == f"{tmp_path}/checkpoints: no committed checkpoint for step 3; have none"


def test_read_trainer_state(tmp_path: Path) -> None:
    ck = _committed(tmp_path, 4)
    assert C.read_trainer_state(ck) == {"step": 4, "loader": {"pos": 4}}
    (ck / C.TRAINER_STATE).write_text("{broken")
    with pytest.raises(CheckpointError, match=r"trainer_state\.json: unreadable: "):
        C.read_trainer_state(ck)


def test_model_misfit_lists_at_most_ten(tmp_path: Path) -> None:
    ck = _committed(tmp_path)
    have = C._checkpoint_tensor_shapes(ck, "model.")
    assert have == {"0.weight": (8, 4), "0.bias": (8,), "1.weight": (2, 8), "1.bias": (2,)}
    C.check_model_fits(ck, dict(have))  # fits: no error
    expected = {f"x{i:02d}": (1,) for i in range(12)}
    with pytest.raises(CheckpointError) as e:
        C.check_model_fits(ck, expected)
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {ck} does not fit the model config: missing x00; missing x01; ")
    assert msg.endswith("missing x09; ... 6 more")  # 12 missing + 4 unexpected = 16
    with pytest.raises(CheckpointError) as e:
        C.check_model_fits(ck, {**have, "0.bias": (9,), "extra": (1,)})
    assert str(e.value).endswith("does not fit the model config: missing extra; 0.bias: checkpoint [8] vs model [9]")
    exactly_ten = {k: (0,) for k in have} | {f"y{i}": (1,) for i in range(6)}
    with pytest.raises(CheckpointError) as e:
        C.check_model_fits(ck, exactly_ten)
    assert "more" not in str(e.value)


def test_resume_grad_accum_reads_older_states_and_lists_micro_sizes() -> None:
    ck = Path("step_00000010")
    # no world_size / micro / accum recorded: the current layout
    assert C.resume_grad_accum({}, ck, 2, 4, 3) == 3
    assert C.resume_grad_accum({"loader": {"world_size": 4, "micro_batch_size": 2}}, ck, 2, 2, 1) == 2
    assert C.resume_grad_accum({"world_size": 4, "micro_batch_size": 2}, ck, 8, 1, 3) == 3  # accum: the current
    with pytest.raises(CheckpointError) as e:
        C.resume_grad_accum({"world_size": 2, "micro_batch_size": 3, "grad_accum_steps": 2}, ck, 4, 5, 1)
    assert str(e.value).endswith(
        "rank counts that can with micro batch 5: none; micro batch sizes that can on 4 ranks: 1, 3"
    )


def test_save_reports_and_manifest_fields(tmp_path: Path) -> None:
    said: list[str] = []
    m, opt = make()
    mgr = C.CheckpointManager(tmp_path, keep_last=3, rank=0, world_size=1, warn=said.append, info=said.append)
    assert save(mgr, 7, m, opt)
    assert len(said) == 1 and said[0].startswith("checkpoint step 7 saved in ") and said[0].endswith("s")
    ck = tmp_path / "checkpoints" / "step_00000007"
    marker = json.loads((ck / C.MARKER).read_text())
    assert marker["step"] == 7 and marker["world_size"] == 1 and marker["hash"] == "xxh3_128"
    assert marker["total_bytes"] == sum(p.stat().st_size for p in ck.iterdir() if p.name != C.MARKER)
    assert list(marker["files"]) == sorted(marker["files"])
    assert isinstance(marker["hash_s"], float) and isinstance(marker["time"], float)
    assert json.loads((ck / C.TRAINER_STATE).read_text()) == {"step": 7, "loader": {"pos": 7}}
    assert (ck / C.TRAINER_STATE).read_text().startswith('{\n "step"')  # indent=1, for people
    assert torch.load(ck / "rank_00000.pt", weights_only=False) == {"rng": {}}


def test_commit_hook_and_a_failing_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    m, opt = make()
    mgr = manager(tmp_path, warnings=said)
    committed: list[Path] = []
    mgr.on_commit = committed.append
    assert save(mgr, 1, m, opt)
    assert committed == [tmp_path / "checkpoints" / "step_00000001"]

    def broken(path: Path, text: str) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(L, "atomic_write", broken)
    assert not save(mgr, 2, m, opt)
    assert said == [
        "checkpoint step_00000002 could not be committed (OSError: read-only file system); "
        "the previous checkpoint is kept"
    ]
    assert not (tmp_path / "checkpoints" / "step_00000002.tmp").exists()
    assert [s for s, _ in C.find_checkpoints(tmp_path)] == [1]


def test_failed_checksumming_is_not_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    m, opt = make()
    mgr = manager(tmp_path, warnings=said)

    def unreadable(ckpt: Path, rels: list[str]) -> dict:
        raise OSError("EIO")

    monkeypatch.setattr(L, "hash_files", unreadable)
    assert not save(mgr, 1, m, opt)
    assert said == [
        "checkpoint step_00000001 could not be committed (OSError: checksumming failed (rank 0: OSError: EIO)); "
        "the previous checkpoint is kept"
    ]
    assert not (tmp_path / "checkpoints" / "step_00000001.tmp").exists()


def test_prune_keeps_the_newest_and_drops_leftovers(tmp_path: Path) -> None:
    m, opt = make()
    mgr = manager(tmp_path, keep=1)
    root = tmp_path / "checkpoints"
    save(mgr, 1, m, opt)
    (root / "step_00000009.tmp").mkdir()
    (root / "step_00000008.old").mkdir()
    (root / "notes").mkdir()
    save(mgr, 2, m, opt)
    assert sorted(p.name for p in root.iterdir()) == ["notes", "step_00000002"]


def test_save_over_an_existing_step_names_why(tmp_path: Path) -> None:
    said: list[str] = []
    m, opt = make()
    save(manager(tmp_path), 3, m, opt)
    mgr = manager(tmp_path, warnings=said)
    assert save(mgr, 3, m, opt)
    assert said == ["replaced step_00000003 (written by an earlier attempt at this step) with this save"]
    assert C.check_checkpoint(tmp_path / "checkpoints" / "step_00000003") is None


def test_background_save_commits_on_poll_or_wait(tmp_path: Path) -> None:
    said: list[str] = []
    m, opt = make()
    mgr = C.CheckpointManager(
        tmp_path, keep_last=3, rank=0, world_size=1, async_save=True, warn=said.append, info=said.append
    )
    assert mgr._ckpt_pg is None  # no process group: nothing to create
    assert save(mgr, 1, m, opt)
    assert said[0].startswith("checkpoint step 1: staged in ") and said[0].endswith("s, writing in background")
    assert mgr._pending is not None
    mgr._pending[0].result()
    mgr.poll()  # done: commits
    assert mgr._pending is None
    assert [s for s, _ in C.find_checkpoints(tmp_path)] == [1]
    assert save(mgr, 2, m, opt)
    assert mgr.wait() and mgr._pending is None
    assert mgr.wait()  # nothing in flight
    assert [s for s, _ in C.find_checkpoints(tmp_path)] == [1, 2]


def test_background_save_that_fails_keeps_the_previous(tmp_path: Path) -> None:
    from concurrent.futures import Future

    said: list[str] = []
    m, opt = make()
    mgr = manager(tmp_path, warnings=said)
    save(mgr, 1, m, opt)
    mgr.async_save = True
    assert save(mgr, 2, m, opt)
    fut, tmp, final, state = mgr._pending
    fut.result()
    failed: Future = Future()
    failed.set_exception(OSError("lost the disk"))
    mgr._pending = (failed, tmp, final, state)
    assert not mgr.wait()
    assert said == [
        "background checkpoint step_00000002 failed (OSError: lost the disk); the previous checkpoint is kept"
    ]
    assert not tmp.exists()
    assert [s for s, _ in C.find_checkpoints(tmp_path)] == [1]


def test_poll_leaves_an_unfinished_save_pending(tmp_path: Path) -> None:
    from concurrent.futures import Future

    mgr = manager(tmp_path)
    running: Future = Future()
    mgr._pending = (running, tmp_path / "t", tmp_path / "f", {})
    mgr.poll()
    assert mgr._pending is not None
    mgr._pending = None
    mgr.poll()  # nothing pending: nothing to do


def test_load_without_a_rank_file_gives_an_empty_rank_state(tmp_path: Path) -> None:
    from tests.unit.test_checkpoint import app_state

    ck = _committed(tmp_path)
    (ck / "rank_00000.pt").unlink()
    m, opt = make(seed=3)
    state = C.CheckpointManager(tmp_path, 3, 0, 1, warn=print, info=print).load(
        ck, app_state(m, opt), {k: tuple(v.shape) for k, v in m.state_dict().items()}
    )
    assert state["_rank_state"] == {} and state["step"] == 1


def test_find_checkpoints_checks_deep_by_default_and_goes_on_after_a_bad_one(tmp_path: Path) -> None:
    m, opt = make()
    mgr = manager(tmp_path)
    for s in (1, 2, 3):
        save(mgr, s, m, opt)
    root = tmp_path / "checkpoints"
    data_file = sorted((root / "step_00000001").glob("*.distcp"))[0]
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # same size: only the checksum can tell
    data_file.write_bytes(bytes(raw))
    said: list[str] = []
    assert [s for s, _ in C.find_checkpoints(tmp_path, warn=said.append)] == [2, 3]
    assert said == [
        f"skipping checkpoint {root / 'step_00000001'}: file {data_file.name} does not match its xxh3_128 checksum"
    ]
    assert [s for s, _ in C.find_checkpoints(tmp_path, deep=False)] == [1, 2, 3]  # sizes only


def test_pick_checkpoint_always_verifies_checksums(tmp_path: Path) -> None:
    m, opt = make()
    mgr = manager(tmp_path)
    for s in (1, 2):
        save(mgr, s, m, opt)
    data_file = sorted((tmp_path / "checkpoints" / "step_00000002").glob("*.distcp"))[0]
    raw = bytearray(data_file.read_bytes())
    raw[0] ^= 0x01
    data_file.write_bytes(bytes(raw))
    said: list[str] = []
    assert C.pick_checkpoint(tmp_path, said.append)[0] == 1
    assert C.pick_checkpoint(tmp_path, said.append, step=2) is None
    assert len(said) == 2


def test_file_xxh3_reads_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint shard can be many GB: it is hashed a chunk at a time, never read whole."""
    import builtins

    p = tmp_path / "f"
    p.write_bytes(os.urandom(5000))
    sizes: list = []

    class Spy:
        def __init__(self, f) -> None:
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

        def read(self, n=-1):
            sizes.append(n)
            return self.f.read(n)

    monkeypatch.setattr(C, "open", lambda *a, **k: Spy(builtins.open(*a, **k)), raising=False)  # noqa: SIM115
    assert C.file_xxh3(p, chunk_bytes=2048) == xxhash.xxh3_128(p.read_bytes()).hexdigest()
    assert sizes == [2048, 2048, 2048, 2048]  # 2048 + 2048 + 904, then the empty read that ends it
    sizes.clear()
    C.file_xxh3(p)
    assert sizes == [1 << 23, 1 << 23]


def test_load_model_state_dict_restores_the_weights(tmp_path: Path) -> None:
    m, opt = make(seed=0)
    ck = _committed(tmp_path)
    other, _ = make(seed=5)
    C.load_model_state_dict(ck, other)
    for a, b in zip(m.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_grad_accum_is_an_int_and_lists_every_micro_size() -> None:
    ck = Path("step_00000010")
    got = C.resume_grad_accum({"world_size": 4, "micro_batch_size": 2, "grad_accum_steps": 1}, ck, 2, 2, 1)
    assert got == 2 and isinstance(got, int)
    # global batch 12 on 5 ranks: no micro size can; on 3 ranks x micro 8: ranks 1, 2, 3, 4, 6, 12 / micro 1, 2, 4
    with pytest.raises(CheckpointError) as e:
        C.resume_grad_accum({"world_size": 3, "micro_batch_size": 4, "grad_accum_steps": 1}, ck, 3, 8, 1)
    assert str(e.value).endswith(
        "rank counts that can with micro batch 8: none; micro batch sizes that can on 3 ranks: 1, 2, 4"
    )
    with pytest.raises(CheckpointError) as e:
        C.resume_grad_accum({"world_size": 1, "micro_batch_size": 6, "grad_accum_steps": 1}, ck, 4, 4, 1)
    assert str(e.value).endswith(
        "rank counts that can with micro batch 4: none; micro batch sizes that can on 4 ranks: none"
    )
    with pytest.raises(CheckpointError) as e:
        C.resume_grad_accum({"world_size": 1, "micro_batch_size": 6, "grad_accum_steps": 1}, ck, 4, 2, 1)
    assert str(e.value).endswith(
        "rank counts that can with micro batch 2: 1, 3; micro batch sizes that can on 4 ranks: none"
    )
    # the loader's record is read when the trainer's has none; the trainer's wins when both are there
    loader = {"loader": {"world_size": 2, "micro_batch_size": 3}}
    assert C.resume_grad_accum(loader, ck, 1, 6, 5) == 5  # 2 x 3 x accum 5 = 30 = 1 x 6 x 5
    assert C.resume_grad_accum(loader, ck, 3, 2, 1) == 1  # 2 x 3 x 1 = 6 = 3 x 2 x 1
    assert C.resume_grad_accum({"world_size": 6, **loader}, ck, 3, 2, 1) == 3  # 6 x 3 x 1 = 18
    assert C.resume_grad_accum({"micro_batch_size": 1, **loader}, ck, 1, 2, 1) == 1  # 2 x 1 x 1 = 2


def test_load_returns_this_ranks_state(tmp_path: Path) -> None:
    from tests.unit.test_checkpoint import app_state

    m, opt = make()
    mgr = manager(tmp_path)
    assert mgr.save(1, app_state(m, opt), {"step": 1}, {"rng": [1, 2], "obj": Path("x")})
    ck = tmp_path / "checkpoints" / "step_00000001"
    state = mgr.load(ck, app_state(m, opt), {k: tuple(v.shape) for k, v in m.state_dict().items()})
    assert state["_rank_state"] == {"rng": [1, 2], "obj": Path("x")}  # any picklable object, not only tensors


def _two_rank_body(rank: int, store: str, run_dir: str) -> dict:
    """What one of two ranks does (gloo on CPU): save 3 checkpoints together, then agree on the newest
    valid one after rank 0 damaged a file that only rank 1 verifies."""
    from datetime import timedelta

    import torch.distributed as dist
    from tests.unit.test_checkpoint import app_state

    # a bounded wait: if the other rank died, fail instead of waiting for the default 30 minutes
    dist.init_process_group(
        "gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2, timeout=timedelta(seconds=120)
    )
    try:
        warned: list[str] = []
        mgr = C.CheckpointManager(Path(run_dir), keep_last=5, rank=rank, world_size=2, warn=warned.append, info=print)
        m, opt = make()
        for s in (1, 2, 3):
            assert mgr.save(s, app_state(m, opt), {"step": s}, {"rank": rank})
        root = Path(run_dir) / "checkpoints"
        if rank == 0:
            (root / "step_00000003" / C.MARKER).unlink()
            files = sorted(json.loads((root / "step_00000002" / C.MARKER).read_text())["files"])
            victim = root / "step_00000002" / files[1]  # share (1, 2): rank 1 hashes it, rank 0 does not
            raw = bytearray(victim.read_bytes())
            raw[0] ^= 0x01
            victim.write_bytes(bytes(raw))
        dist.barrier()
        hashed: list[str] = []
        real_xxh3 = C.file_xxh3
        C.file_xxh3 = lambda p, *a, **k: (hashed.append(p.name), real_xxh3(p, *a, **k))[1]
        try:
            step, path = mgr.latest()
        finally:
            C.file_xxh3 = real_xxh3
        ck = root / "step_00000001"
        loaded = mgr.load(ck, app_state(m, opt), {k: tuple(v.shape) for k, v in m.state_dict().items()})
        bg = C.CheckpointManager(Path(run_dir), keep_last=5, rank=rank, world_size=2, async_save=True)
        return {
            "latest": (step, str(path)),
            "warned": warned,
            "rank_state": loaded["_rank_state"],
            "pg": dist.get_backend(bg._ckpt_pg) if bg._ckpt_pg is not None else None,
            "marker": json.loads((ck / C.MARKER).read_text()),
            "hashed": len(hashed),
        }
    finally:
        dist.destroy_process_group()


def _rank1(store: str, run_dir: str, q) -> None:
    try:
        q.put(_two_rank_body(1, store, run_dir))
    except BaseException as e:
        q.put({"error": repr(e)})
        raise


def test_two_ranks_save_together_and_agree_on_the_newest_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 runs here, rank 1 in a spawned process (it imports the same mltrain as this one)."""
    import multiprocessing as mp

    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    monkeypatch.chdir(_START_CWD)  # the spawned rank resolves the test run's relative import paths from here
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    store = str(tmp_path / "store")
    child = ctx.Process(target=_rank1, args=(store, str(tmp_path), q))
    child.start()
    try:
        mine = _two_rank_body(0, store, str(tmp_path))
        theirs = q.get(timeout=120)
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert "error" not in theirs, theirs
    root = tmp_path / "checkpoints"
    assert mine["latest"] == theirs["latest"] == (1, str(root / "step_00000001"))
    assert (
        mine["warned"][-2:]
        == theirs["warned"][-2:]
        == [
            "skipping checkpoint step_00000003: no COMMITTED marker (the save did not finish)",
            f"skipping checkpoint step_00000002: file {sorted(mine['marker']['files'])[1]} does not match its xxh3_128 checksum",
        ]
    )
    assert (mine["rank_state"], theirs["rank_state"]) == ({"rank": 0}, {"rank": 1})
    assert mine["pg"] == theirs["pg"] == "gloo"
    # the ranks split the reading: step 2 (damaged in its file 1, rank 1's) costs rank 0 the even files
    # and rank 1 one file; step 1 costs each its half
    n = len(mine["marker"]["files"])
    assert (mine["hashed"], theirs["hashed"]) == ((n + 1) // 2 * 2, 1 + n // 2)
    files = mine["marker"]["files"]
    assert mine["marker"]["world_size"] == 2 and {"rank_00000.pt", "rank_00001.pt"} <= set(files)
    assert all(files[rel]["xxh3_128"] == C.file_xxh3(root / "step_00000001" / rel) for rel in files)


def test_save_into_a_new_run_dir_over_a_leftover_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first save creates checkpoints/ (and the run dir); a temp dir left by a crashed save of the
    same step is cleared first, so nothing of it ends up in the checkpoint."""
    import torch.distributed.checkpoint as dcp

    run = tmp_path / "new" / "run"
    m, opt = make()
    assert save(manager(run), 1, m, opt)
    leftover = run / "checkpoints" / "step_00000002.tmp"
    leftover.mkdir()
    (leftover / "junk.bin").write_bytes(b"old")
    ids: list[str] = []
    real = dcp.save
    monkeypatch.setattr(
        dcp,
        "save",
        lambda state, checkpoint_id: (ids.append(checkpoint_id), real(state, checkpoint_id=checkpoint_id))[1],
    )
    assert save(manager(run), 2, m, opt)
    assert ids == [str(leftover)]
    assert not (run / "checkpoints" / "step_00000002" / "junk.bin").exists()
    assert C.check_checkpoint(run / "checkpoints" / "step_00000002") is None


def test_failed_save_message_names_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.checkpoint as dcp

    def broken(*a, **k):
        raise RuntimeError("writer died")

    monkeypatch.setattr(dcp, "save", broken)
    said: list[str] = []
    m, opt = make()
    assert not save(manager(tmp_path, warnings=said), 4, m, opt)
    assert said == ["checkpoint at step 4 failed (RuntimeError: writer died); the previous checkpoint is kept"]


def test_save_times_are_durations(tmp_path: Path) -> None:
    said: list[str] = []
    m, opt = make()
    for async_save in (False, True):
        mgr = C.CheckpointManager(
            tmp_path / str(async_save), 3, 0, 1, async_save=async_save, warn=said.append, info=said.append
        )
        save(mgr, 1, m, opt)
        mgr.wait()
    import re

    secs = [float(re.search(r"in (\d+\.\d\d)s", s).group(1)) for s in said]
    assert len(secs) == 2 and all(0 <= s < 600 for s in secs), said


def test_require_lists_the_committed_steps_without_hashing_them(tmp_path: Path) -> None:
    """The error names every committed step (a size check, no hashing: it is only a listing)."""
    ck = _committed(tmp_path, 1)
    data_file = sorted(ck.glob("*.distcp"))[0]
    raw = bytearray(data_file.read_bytes())
    raw[0] ^= 0x01
    data_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as e:
        C.require_checkpoint(tmp_path, lambda m: None, step=7)
    assert str(e.value).endswith("no committed checkpoint for step 7; have 1")


def test_model_misfit_counts_and_unexpected_keys(tmp_path: Path) -> None:
    ck = _committed(tmp_path)
    with pytest.raises(CheckpointError) as e:
        C.check_model_fits(ck, {})
    assert str(e.value).endswith("unexpected 0.bias; unexpected 0.weight; unexpected 1.bias; unexpected 1.weight")
    eleven = {f"x{i}": (1,) for i in range(7)}  # 7 missing + 4 unexpected = 11: one more than shown
    with pytest.raises(CheckpointError) as e:
        C.check_model_fits(ck, eleven)
    assert str(e.value).endswith("; ... 1 more")


def test_a_failed_rename_into_place_keeps_the_previous_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saving step 2 again, the rename of the new copy into place fails: the previous step 2 is put back
    (the warning says the previous checkpoint is kept) and nothing is left behind."""
    said: list[str] = []
    m, opt = make()
    mgr = manager(tmp_path, warnings=said)
    save(mgr, 2, m, opt)
    real = os.replace
    calls: list = []

    def into_place_fails(src, dst):
        calls.append(src)
        if str(src).endswith(".tmp") and Path(src).is_dir():  # the new checkpoint dir, not a file
            raise OSError("I/O error")
        return real(src, dst)

    monkeypatch.setattr(C.os, "replace", into_place_fails)
    assert not save(mgr, 2, m, opt)
    assert said[-1].endswith("the previous checkpoint is kept")
    monkeypatch.setattr(C.os, "replace", real)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002"]
    assert C.check_checkpoint(root / "step_00000002") is None
    assert save(mgr, 3, m, opt)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000003"]


def test_replace_over_a_leftover_old_copy(tmp_path: Path) -> None:
    said: list[str] = []
    m, opt = make()
    mgr = manager(tmp_path, warnings=said)
    save(mgr, 2, m, opt)
    old = tmp_path / "checkpoints" / "step_00000002.old"
    old.mkdir()
    (old / "x").write_text("left by a crash")
    assert save(mgr, 2, m, opt)
    assert said == ["replaced step_00000002 (written by an earlier attempt at this step) with this save"]
    assert not old.exists()


def test_replace_says_why_from_sizes_only(tmp_path: Path) -> None:
    """The reason given for replacing a step is from the cheap check: a same-size corruption is not
    hashed again at that point (resume already named it)."""
    said: list[str] = []
    m, opt = make()
    ck = _committed(tmp_path, 2)
    data_file = sorted(ck.glob("*.distcp"))[0]
    raw = bytearray(data_file.read_bytes())
    raw[0] ^= 0x01
    data_file.write_bytes(bytes(raw))
    assert save(manager(tmp_path, warnings=said), 2, m, opt)
    assert said == ["replaced step_00000002 (written by an earlier attempt at this step) with this save"]
    ck3 = _committed(tmp_path, 3)
    (ck3 / C.MARKER).unlink()
    said.clear()
    assert save(manager(tmp_path, warnings=said), 3, m, opt)
    assert said == ["replaced step_00000003 (no COMMITTED marker (the save did not finish)) with this save"]


def test_local_backend_each_rank_hashes_the_files_it_wrote_and_drop_tolerates_a_missing_dir(tmp_path):
    """The local store's share of the commit: rank r hashes `__r_*.distcp` and `rank_r.pt` (fresh in its page
    cache), rank 0 also what no rank owns; dropping an attempt that is already gone is not an error (a
    failed commit may come after the rename)."""
    from mltrain.train.local_checkpoint import LocalBackend

    tmp = tmp_path / "checkpoints" / "step_00000001.tmp"
    tmp.mkdir(parents=True)
    for name in ["__0_0.distcp", "__1_0.distcp", "rank_00000.pt", "rank_00001.pt", ".metadata"]:
        (tmp / name).write_bytes(name.encode())
    b = LocalBackend(tmp_path / "checkpoints", lambda m: None)
    assert set(b.rank_hashes(tmp, 1, 2)) == {"__1_0.distcp", "rank_00001.pt"}
    assert set(b.rank_hashes(tmp, 0, 2)) == {"__0_0.distcp", "rank_00000.pt", ".metadata"}
    one = b.rank_hashes(tmp, 0, 1)  # one rank: everything is its own
    assert set(one) == {"__0_0.distcp", "__1_0.distcp", "rank_00000.pt", "rank_00001.pt", ".metadata"}
    assert one["rank_00001.pt"] == {"size": 13, C.HASH: xxhash.xxh3_128(b"rank_00001.pt").hexdigest()}
    b.drop(tmp)
    assert not tmp.exists()
    b.drop(tmp)  # already gone: nothing to do


def test_pruning_counts_committed_steps_by_their_marker_not_by_rehashing_them(tmp_path):
    """keep_last=1: a later save prunes every older committed step, a bit-flipped one too. Pruning judges
    by the marker and sizes (cheap, on rank 0 at every commit); rehashing would also hide the damaged step
    from the count and leave it on disk for good."""
    m, opt = make()
    mgr = manager(tmp_path, keep=1)
    assert save(mgr, 1, m, opt)
    ck1 = tmp_path / "checkpoints" / "step_00000001"
    shard = next(ck1.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    mgr.keep_last = 3
    assert save(mgr, 2, m, opt)
    shard.write_bytes(bytes(data))  # step 1 damaged after step 2 was saved
    mgr.keep_last = 1
    assert save(mgr, 3, m, opt)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000003"]


def test_a_leftover_that_cannot_be_removed_does_not_fail_the_commit(tmp_path, monkeypatch):
    """Removing an old step can fail (NFS keeps `.nfsXXXX` files of files still open: EBUSY). By then the
    new step is committed, so removing leftovers (pruned steps, stale temps, the copy a re-save moved
    aside) is best effort, retried at the next prune; it never turns a committed save into a failed one.
    A mock: rmtree removes nothing, and raises EBUSY unless told to ignore errors."""
    import errno
    import shutil

    m, opt = make()
    warnings: list[str] = []
    mgr = manager(tmp_path, keep=1, warnings=warnings)
    assert save(mgr, 1, m, opt)
    (tmp_path / "checkpoints" / "step_00000007.tmp").mkdir()  # a killed save's temp, for prune to clear

    def busy(path, ignore_errors=False, onerror=None, **kw):
        if not ignore_errors:
            raise OSError(errno.EBUSY, "Device or resource busy", str(path))

    monkeypatch.setattr(shutil, "rmtree", busy)
    assert save(mgr, 2, m, opt)  # prunes step 1 and the stale temp: both fail quietly
    assert save(mgr, 2, m, opt)  # a re-save of step 2 moves the first copy aside, then cannot remove it
    assert not [w for w in warnings if "could not be committed" in w], warnings
    assert any("replaced step_00000002" in w for w in warnings)
    assert [s for s, _ in C.find_checkpoints(tmp_path) if s == 2] == [2]


def test_files_in_subfolders_are_hashed_and_folders_and_a_stale_marker_are_not(tmp_path: Path) -> None:
    """A storage writer that makes a subfolder still has every file recorded (and so verified); the folder
    itself is not a file to hash, and a marker left in the attempt is not part of what the marker lists."""
    tmp = tmp_path / "step_00000003.tmp"
    (tmp / "sub").mkdir(parents=True)
    (tmp / "__0_0.distcp").write_bytes(b"a" * 10)
    (tmp / "sub" / "extra.bin").write_bytes(b"b" * 7)
    (tmp / C.MARKER).write_text("{}")
    entries: dict = {}
    L.LocalBackend(tmp_path, lambda _: None).add_trainer_state(tmp, {"step": 3}, entries)
    assert sorted(entries) == ["__0_0.distcp", "sub/extra.bin", C.TRAINER_STATE]
    assert entries["sub/extra.bin"]["size"] == 7
    assert entries["sub/extra.bin"][C.HASH] == xxhash.xxh3_128(b"b" * 7).hexdigest()
