"""Checkpoint commit / skip / prune logic in one process (DCP without a process group)."""

from pathlib import Path

import pytest
import torch
from torch import nn

from mltrain.errors import CheckpointError
from mltrain.train.checkpoint import CheckpointManager, find_checkpoints, load_model_state_dict


def make(seed: int = 0, width: int = 8):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, width), nn.Linear(width, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    return m, opt


def app_state(m, opt):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(m, opt)
    return {"model": msd, "optim": osd}


def manager(run: Path, keep: int = 3, warnings: list | None = None) -> CheckpointManager:
    sink = warnings if warnings is not None else []
    return CheckpointManager(run, keep_last=keep, rank=0, world_size=1, warn=sink.append, info=lambda m: None)


def save(mgr: CheckpointManager, step: int, m, opt) -> bool:
    return mgr.save(step, app_state(m, opt), {"step": step, "loader": {"pos": step}}, {"rng": {}})


def test_save_commit_and_resume_roundtrip(tmp_path):
    m, opt = make()
    mgr = manager(tmp_path)
    assert save(mgr, 5, m, opt)
    ck = tmp_path / "checkpoints" / "step_00000005"
    assert (ck / "COMMITTED").is_file() and not list(tmp_path.glob("checkpoints/*.tmp"))
    m2, opt2 = make(seed=1)
    state = app_state(m2, opt2)
    step, path = mgr.latest()
    ts = mgr.load(path, state, {k: tuple(v.shape) for k, v in m2.state_dict().items()})
    from torch.distributed.checkpoint.state_dict import set_state_dict

    set_state_dict(m2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert step == 5 and ts["loader"] == {"pos": 5}
    for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])


def test_keep_last_k(tmp_path):
    m, opt = make()
    mgr = manager(tmp_path, keep=2)
    for s in (1, 2, 3, 4):
        save(mgr, s, m, opt)
    assert [s for s, _ in find_checkpoints(tmp_path)] == [3, 4]


@pytest.mark.parametrize("damage", ["no_marker", "truncate", "bitflip", "missing_file", "tmp_only"])
def test_damaged_newest_is_skipped_with_warning(tmp_path, damage):
    m, opt = make()
    mgr = manager(tmp_path)
    save(mgr, 1, m, opt)
    save(mgr, 2, m, opt)
    newest = tmp_path / "checkpoints" / "step_00000002"
    data_file = sorted(newest.glob("*.distcp"))[0]
    if damage == "no_marker":
        (newest / "COMMITTED").unlink()
    elif damage == "truncate":
        data_file.write_bytes(data_file.read_bytes()[:-7])
    elif damage == "bitflip":
        raw = bytearray(data_file.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        data_file.write_bytes(bytes(raw))
    elif damage == "missing_file":
        data_file.unlink()
    elif damage == "tmp_only":
        newest.rename(newest.with_name(newest.name + ".tmp"))
    warnings: list[str] = []
    step, path = manager(tmp_path, warnings=warnings).latest()
    assert step == 1
    if damage != "tmp_only":
        assert any("step_00000002" in w for w in warnings), warnings


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    """Out of disk during a save. A mock: we cannot fill a real disk in CI, so the DCP writer raises
    ENOSPC; the manager must drop the temp dir and keep the previous commit."""
    import errno

    import torch.distributed.checkpoint as dcp

    m, opt = make()
    mgr = manager(tmp_path)
    save(mgr, 1, m, opt)

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dcp, "save", full_disk)
    warnings: list[str] = []
    mgr.warn = warnings.append
    assert not save(mgr, 2, m, opt)
    assert "No space left" in warnings[0] and "previous checkpoint is kept" in warnings[0]
    assert [s for s, _ in find_checkpoints(tmp_path)] == [1]
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_a_temp_dir_that_cannot_be_made_is_a_failed_save_not_a_crash(tmp_path, monkeypatch):
    """The disk fills between two saves, so even `step_N.tmp/` cannot be made (a mock: mkdir raises
    ENOSPC). Rank 0 must not raise out of save() (its peers would wait in the collective until the
    timeout): the save fails like any other, one warning, the previous checkpoint kept."""
    import errno

    m, opt = make()
    warnings: list[str] = []
    mgr = manager(tmp_path, warnings=warnings)
    save(mgr, 1, m, opt)
    real_mkdir = Path.mkdir

    def full(self, *a, **k):
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", full)
    assert not save(mgr, 2, m, opt)
    assert len(warnings) == 1 and "checkpoint at step 2 failed" in warnings[0], warnings
    assert "No space left" in warnings[0] and "previous checkpoint is kept" in warnings[0]
    monkeypatch.undo()
    assert [s for s, _ in find_checkpoints(tmp_path)] == [1]
    assert save(mgr, 3, m, opt) and [s for s, _ in find_checkpoints(tmp_path)] == [1, 3]


def test_checkpoint_that_does_not_fit_lists_mismatches(tmp_path):
    m, opt = make(width=8)
    save(manager(tmp_path), 1, m, opt)
    other = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as e:
        load_model_state_dict(tmp_path / "checkpoints" / "step_00000001", other)
    msg = str(e.value)
    assert "0.weight: checkpoint [8, 4] vs model [16, 4]" in msg and "missing 2.weight" in msg


def test_every_file_has_a_checksum_in_the_marker(tmp_path):
    import json

    m, opt = make()
    save(manager(tmp_path), 1, m, opt)
    ck = tmp_path / "checkpoints" / "step_00000001"
    marker = json.loads((ck / "COMMITTED").read_text())
    files = marker["files"]
    # how long hashing took, in seconds to the millisecond (an elapsed time, not a clock reading)
    assert 0 <= marker["hash_s"] < 3600 and marker["hash_s"] == round(marker["hash_s"], 3)
    on_disk = {str(p.relative_to(ck)) for p in ck.rglob("*") if p.is_file() and p.name != "COMMITTED"}
    assert set(files) == on_disk and {".metadata", "trainer_state.json", "rank_00000.pt"} <= on_disk
    assert all(len(e["xxh3_128"]) == 32 and e["size"] == (ck / rel).stat().st_size for rel, e in files.items())


def test_a_damaged_step_does_not_block_saving_that_step_again(tmp_path):
    """Resume skips a bit-flipped step 2 (one line naming it and why), trains to step 2 again and saves it:
    the new save replaces the damaged dir instead of being skipped because the name exists."""
    from mltrain.train.checkpoint import check_checkpoint

    m, opt = make()
    save(manager(tmp_path), 1, m, opt)
    save(manager(tmp_path), 2, m, opt)
    step2 = tmp_path / "checkpoints" / "step_00000002"
    data_file = sorted(step2.glob("*.distcp"))[0]
    raw = bytearray(data_file.read_bytes())
    raw[-1] ^= 0x01
    data_file.write_bytes(bytes(raw))
    warnings: list[str] = []
    mgr = manager(tmp_path, warnings=warnings)
    assert mgr.latest()[0] == 1
    assert warnings == ["skipping checkpoint step_00000002: file __0_0.distcp does not match its xxh3_128 checksum"]
    assert save(mgr, 2, m, opt)
    assert check_checkpoint(step2) is None
    assert any("replaced step_00000002" in w for w in warnings), warnings
    assert [s for s, _ in find_checkpoints(tmp_path)] == [1, 2]
    assert not list((tmp_path / "checkpoints").glob("step_*.*"))  # no .tmp / .old left behind


def test_resume_grad_accum_keeps_the_global_batch_or_names_what_would():
    from mltrain.train.checkpoint import resume_grad_accum

    saved = {"world_size": 4, "micro_batch_size": 2, "grad_accum_steps": 3}  # global batch 24
    ck = Path("step_00000010")
    assert resume_grad_accum(saved, ck, 4, 2, 5) == 5  # same layout: the configured value stands
    assert resume_grad_accum(saved, ck, 2, 2, 3) == 6
    assert resume_grad_accum(saved, ck, 8, 3, 1) == 1
    assert resume_grad_accum({"world_size": 2, "loader": {"micro_batch_size": 4}}, ck, 1, 4, 1) == 2  # older state
    with pytest.raises(CheckpointError) as e:
        resume_grad_accum(saved, ck, 5, 2, 3)
    assert str(e.value) == (
        "step_00000010 was trained with a global batch of 24 sequences (4 ranks x micro batch 2 x grad_accum 3), "
        "which 5 ranks x micro batch 2 cannot keep; rank counts that can with micro batch 2: 1, 2, 3, 4, 6, 12; "
        "micro batch sizes that can on 5 ranks: none"
    )
