"""TokenLoader edges that mutation testing found unchecked: argument checks, window counts at shard
boundaries, the too-small message, the epoch roll-over, resume at the ends of an epoch, the state keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.unit.test_data_loader import make_token_dir

from mltrain.data import loader as loader_mod
from mltrain.data.loader import STATE_VERSION, TokenLoader
from mltrain.data.shards import write_shard
from mltrain.errors import DataError


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return make_token_dir(tmp_path / "d", train=[130, 95, 200], val=[70])


@pytest.mark.parametrize(
    "seq_len,micro,accum",
    [(0, 1, 1), (-1, 1, 1), (8, 0, 1), (8, -1, 1), (8, 1, 0), (8, 1, -1)],
)
def test_each_non_positive_size_is_refused_alone(data_dir: Path, seq_len: int, micro: int, accum: int) -> None:
    with pytest.raises(DataError) as e:
        TokenLoader(data_dir, "train", seq_len, micro, grad_accum_steps=accum)
    assert str(e.value) == (
        f"seq_len ({seq_len}), micro_batch_size ({micro}) and grad_accum_steps ({accum}) must be > 0"
    )


def test_smallest_sizes_are_accepted(data_dir: Path) -> None:
    ld = TokenLoader(data_dir, "train", 1, 1, grad_accum_steps=1)
    x, y = ld.next_batch()
    assert x.shape == y.shape == (1, 1) and int(y[0, 0]) == int(x[0, 0]) + 1


def test_default_seed_is_zero(data_dir: Path) -> None:
    a, b = TokenLoader(data_dir, "train", 16, 2), TokenLoader(data_dir, "train", 16, 2, seed=0)
    assert a.seed == 0 and a.state_dict()["seed"] == 0
    assert torch.equal(a.next_batch()[0], b.next_batch()[0])


def test_unknown_split_lists_the_known_ones(data_dir: Path) -> None:
    with pytest.raises(DataError, match=r"unknown split 'test'; known: train, val$"):
        TokenLoader(data_dir, "test", 8, 1)


def test_shard_exactly_one_token_longer_than_k_windows_holds_k(tmp_path: Path) -> None:
    # 33 tokens at seq_len 16: windows [0, 17) and [16, 33) -> 2 samples; 32 tokens -> 1
    d = make_token_dir(tmp_path / "d", train=[33, 32])
    ld = TokenLoader(d, "train", 16, 1)
    assert ld.num_samples == 3 and ld.total_tokens == 65
    firsts = sorted(int(ld.next_batch()[0][0, 0]) for _ in range(3))
    assert firsts == [0, 16, 33]


def test_counts_per_rank_and_accum(data_dir: Path) -> None:
    # 25 samples at T=16; 2 ranks x micro 2 x accum 3 = 12 per optimizer step -> 24 per epoch
    ld = TokenLoader(data_dir, "train", 16, 2, rank=1, world_size=2, grad_accum_steps=3)
    assert (ld.grad_accum_steps, ld.block, ld.global_batch) == (3, 4, 12)
    assert (ld.samples_per_epoch, ld.samples_per_rank, ld.steps_per_epoch) == (24, 12, 6)
    assert isinstance(ld.samples_per_rank, int)


def _too_small(d: Path, seq_len: int, micro: int, accum: int = 1) -> str:
    with pytest.raises(DataError) as e:
        TokenLoader(d, "train", seq_len, micro, grad_accum_steps=accum)
    return str(e.value)


def test_too_small_hint_only_when_no_shard_holds_one_window(tmp_path: Path) -> None:
    exact = make_token_dir(tmp_path / "exact", train=[17])  # one window of 17 tokens: no hint
    msg = _too_small(exact, 16, 2)
    assert msg.endswith("but 1 ranks x micro batch 2 need at least 2"), msg
    short = make_token_dir(tmp_path / "short", train=[16])  # one token short of a window: the hint
    msg = _too_small(short, 16, 1)
    assert msg.endswith("need at least 1 (samples never cross shard boundaries and the largest shard has 16 tokens)"), (
        msg
    )


def test_too_small_names_grad_accum_only_above_one(tmp_path: Path) -> None:
    d = make_token_dir(tmp_path / "d", train=[17 * 2])  # 2 samples at T=16
    assert "micro batch 1 x grad_accum 3 need at least 3" in _too_small(d, 16, 1, 3)
    assert "micro batch 2 x grad_accum 2 need at least 4" in _too_small(d, 16, 2, 2)
    assert "grad_accum" not in _too_small(d, 16, 3, 1)


def test_iterating_yields_batches_across_epochs(data_dir: Path) -> None:
    ld = TokenLoader(data_dir, "val", 16, 2)  # 4 samples, 2 steps per epoch
    it = iter(ld)
    batches = [next(it) for _ in range(5)]
    assert all(x.shape == (2, 16) for x, _ in batches)
    assert ld.epoch == 2 and ld.consumed == 2


def test_epochs_keep_counting(data_dir: Path) -> None:
    ld = TokenLoader(data_dir, "val", 16, 4)  # one step per epoch
    seen = []
    for _ in range(4):
        ld.next_batch()
        seen.append(ld.epoch)
    assert seen == [0, 1, 2, 3]


def test_epoch_order_is_computed_once_per_epoch(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The permutation is over every sample of the split (millions on a real corpus): once per epoch."""
    calls: list[int] = []
    real = loader_mod.epoch_order

    def counting(seed: int, epoch: int, n: int) -> np.ndarray:
        calls.append(epoch)
        return real(seed, epoch, n)

    monkeypatch.setattr(loader_mod, "epoch_order", counting)
    ld = TokenLoader(data_dir, "train", 16, 2)
    for _ in range(ld.steps_per_epoch + 2):
        ld.next_batch()
    assert calls == [0, 1]


def test_id_equal_to_vocab_size_is_refused(tmp_path: Path) -> None:
    # ids 0..226; the last window of the second shard ends with id 226 (token offset 96)
    d = make_token_dir(tmp_path / "d", train=[130, 97])
    ld = TokenLoader(d, "train", 16, 14, vocab_size=226)
    with pytest.raises(DataError) as e:
        ld.next_batch()
    assert str(e.value) == (
        f"{d / 'train_00001.bin'}: token id 226 at token offset 96 is >= vocab_size 226; the shard is corrupt "
        "or was written with another tokenizer (re-run `mltrain data prepare`)"
    )
    TokenLoader(d, "train", 16, 14, vocab_size=227).next_batch()  # every id below it: fine


def test_shard_whose_header_disagrees_with_the_manifest_is_refused(data_dir: Path) -> None:
    p = data_dir / "train_00001.bin"
    write_shard(p, np.arange(50), np.dtype(np.uint32))  # a whole, valid shard of another length
    with pytest.raises(DataError, match=r"train_00001\.bin"):
        TokenLoader(data_dir, "train", 16, 1)


def test_shard_of_another_dtype_is_refused(data_dir: Path) -> None:
    p = data_dir / "train_00001.bin"
    write_shard(p, np.arange(95), np.dtype(np.uint16))  # same token count, other width
    with pytest.raises(DataError, match=r"train_00001\.bin"):
        TokenLoader(data_dir, "train", 16, 1)


def test_state_keys(data_dir: Path) -> None:
    ld = TokenLoader(data_dir, "train", 16, 2, rank=1, world_size=2, seed=3, grad_accum_steps=2)
    ld.next_batch()
    st = ld.state_dict()
    assert st == {
        "version": STATE_VERSION,
        "split": "train",
        "epoch": 0,
        "samples": 4,
        "position": 1,
        "seed": 3,
        "seq_len": 16,
        "micro_batch_size": 2,
        "world_size": 2,
        "global_batch": 8,
        "rank": 1,
        "num_samples": 25,
        "tokenizer_sha256": "0" * 64,
        "corpus_fingerprint": "0" * 64,
    }


def _loader(d: Path) -> TokenLoader:
    return TokenLoader(d, "train", 16, 2, 0, 2, seed=1)


def test_state_that_is_not_a_dict_is_one_clear_error(data_dir: Path) -> None:
    with pytest.raises(DataError) as e:
        _loader(data_dir).load_state_dict(["not", "a", "dict"])  # type: ignore[arg-type]
    assert str(e.value) == "loader state: not a dict"
    with pytest.raises(DataError) as e:
        _loader(data_dir).load_state_dict({"version": 9})
    assert str(e.value) == "loader state: unsupported or corrupt state (version 9)"


def test_mismatch_message_says_what_to_do(data_dir: Path) -> None:
    state = _loader(data_dir).state_dict()
    with pytest.raises(DataError) as e:
        _loader(data_dir).load_state_dict({**state, "split": "val"})
    assert str(e.value) == (
        "loader state: split was 'val' when saved, now 'train'; "
        "resume with the same data and sequence length, or start a new run"
    )


def test_layout_message_says_what_to_do(data_dir: Path) -> None:
    state = {**_loader(data_dir).state_dict(), "samples": 2}
    with pytest.raises(DataError) as e:
        TokenLoader(data_dir, "train", 16, 4, 0, 1, seed=1).load_state_dict(state)
    assert str(e.value).endswith(
        "not a multiple of 1 ranks x micro batch 4 = 4; resume with a layout whose world_size x "
        "micro_batch_size divides it"
    )


@pytest.mark.parametrize("bad", [None, "3", -1, 1.5])
def test_version_1_position_that_is_not_a_count_is_refused(data_dir: Path, bad: object) -> None:
    state = {**_loader(data_dir).state_dict(), "version": 1, "position": bad}
    del state["samples"]
    with pytest.raises(DataError, match="invalid epoch/position"):
        _loader(data_dir).load_state_dict(state)


def test_version_1_state_at_position_zero(data_dir: Path) -> None:
    state = {**_loader(data_dir).state_dict(), "version": 1, "position": 0}
    del state["samples"]
    ld = _loader(data_dir)
    ld.load_state_dict(state)
    assert (ld.epoch, ld.consumed) == (0, 0)


def test_resume_at_both_ends_of_an_epoch(tmp_path: Path) -> None:
    d = make_token_dir(tmp_path / "d", train=[17 * 4])  # 4 samples: 2 ranks x micro 2 = one step
    fresh = _loader(d)
    start = _loader(d)
    start.load_state_dict(fresh.state_dict())  # nothing consumed yet
    assert (start.epoch, start.consumed) == (0, 0)
    ran = _loader(d)
    ran.next_batch()  # the whole epoch: samples == num_samples
    assert ran.consumed == ran.num_samples == 4
    resumed = _loader(d)
    resumed.load_state_dict(ran.state_dict())
    assert torch.equal(resumed.next_batch()[0], ran.next_batch()[0])
    assert resumed.epoch == ran.epoch == 1
