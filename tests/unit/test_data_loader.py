"""TokenLoader: shapes, rank disjointness/coverage, (seed, epoch) determinism, exact resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mltrain.data.loader import TokenLoader
from mltrain.data.manifest import Counts, Manifest, ShardInfo, TokenizerInfo, save_manifest
from mltrain.data.shards import write_shard
from mltrain.errors import DataError

VOCAB = 1 << 20  # uint32 ids, so every token in the synthetic corpus is unique


def make_token_dir(root: Path, train: list[int], val: list[int] = ()) -> Path:
    """A data dir whose tokens are 0, 1, 2, ... across shards: a window's first token names it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "tokenizer.json").write_text("{}")
    shards, nxt = [], 0
    for split, sizes in (("train", train), ("val", val)):
        for i, n in enumerate(sizes):
            name = f"{split}_{i:05d}.bin"
            sha = write_shard(root / name, np.arange(nxt, nxt + n), np.dtype(np.uint32))
            shards.append(ShardInfo(file=name, split=split, tokens=n, docs=1, sha256=sha))
            nxt += n
    save_manifest(
        root,
        Manifest(
            created="2026-01-01T00:00:00+00:00",
            dtype="uint32",
            vocab_size=VOCAB,
            eos_id=0,
            tokenizer=TokenizerInfo(sha256="0" * 64, vocab_size=VOCAB, eos_id=0, eos_token="<|endoftext|>", source="t"),
            sources=["synthetic"],
            corpus_fingerprint="0" * 64,
            shard_tokens=max(train),
            val_fraction=0.0,
            counts=Counts(),
            shards=shards,
        ),
    )
    return root


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    # shard sizes chosen so windows do not tile shards exactly: 3 shards, 8+5+12 = 25 samples at T=16
    return make_token_dir(tmp_path / "d", train=[130, 95, 200], val=[70])


def epoch_first_tokens(loader: TokenLoader) -> list[int]:
    out = []
    for _ in range(loader.steps_per_epoch):
        x, _ = loader.next_batch()
        out += x[:, 0].tolist()
    return out


def test_batch_shapes_dtype_and_shifted_targets(data_dir: Path) -> None:
    ld = TokenLoader(data_dir, "train", seq_len=16, micro_batch_size=4, rank=0, world_size=1, seed=1)
    assert ld.num_samples == (129 // 16) + (94 // 16) + (199 // 16) == 25 and ld.steps_per_epoch == 6
    x, y = ld.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    # every window is contiguous and inside one shard, starting at a multiple of seq_len in it
    starts = {0: 0, 1: 130, 2: 225}
    for first in x[:, 0].tolist():
        shard = 2 if first >= 225 else (1 if first >= 130 else 0)
        assert (first - starts[shard]) % 16 == 0
        assert torch.equal(x[x[:, 0] == first][0], torch.arange(first, first + 16))


def test_ranks_disjoint_and_covering(data_dir: Path) -> None:
    world = 3
    loaders = [TokenLoader(data_dir, "train", 16, 2, rank=r, world_size=world, seed=7) for r in range(world)]
    assert {ld.steps_per_epoch for ld in loaders} == {4}  # 25 samples // 3 ranks = 8 each, // B=2 = 4 steps
    per_rank = [epoch_first_tokens(ld) for ld in loaders]
    flat = [t for r in per_rank for t in r]
    assert len(flat) == len(set(flat)) == 24  # disjoint; the one sample that does not divide by 3 is dropped
    all_samples = {225 + 16 * i for i in range(12)} | {130 + 16 * i for i in range(5)} | {16 * i for i in range(8)}
    assert set(flat) <= all_samples and len(all_samples - set(flat)) == 1
    # world_size 1 with B dividing the samples covers every sample exactly once per epoch
    single = TokenLoader(data_dir, "train", 16, 5, seed=7)
    assert sorted(epoch_first_tokens(single)) == sorted(all_samples)


def test_order_is_a_pure_function_of_seed_and_epoch(data_dir: Path) -> None:
    a = TokenLoader(data_dir, "train", 16, 4, seed=3)
    b = TokenLoader(data_dir, "train", 16, 4, seed=3)
    ea0, eb0 = epoch_first_tokens(a), epoch_first_tokens(b)
    ea1, eb1 = epoch_first_tokens(a), epoch_first_tokens(b)
    assert ea0 == eb0 and ea1 == eb1 and a.epoch == 1
    assert ea0 != ea1 and len(set(ea0) & set(ea1)) >= 23  # reshuffled; 24 of 25 samples used per epoch
    c = TokenLoader(data_dir, "train", 16, 4, seed=4)
    assert epoch_first_tokens(c) != ea0
    # rolling over: the batch after the last of an epoch is the first of the next epoch
    d = TokenLoader(data_dir, "train", 16, 4, seed=3)
    for _ in range(d.steps_per_epoch):
        d.next_batch()
    assert d.next_batch()[0][:, 0].tolist() == ea1[:4] and d.epoch == 1


def test_state_dict_resume_gives_identical_batches(data_dir: Path) -> None:
    ref = TokenLoader(data_dir, "train", 16, 2, rank=1, world_size=2, seed=11)
    for _ in range(5):
        ref.next_batch()
    state = json.loads(json.dumps(ref.state_dict()))  # survives a JSON round trip (checkpoint)
    assert state["epoch"] == 0 and state["position"] == 5
    expected = [ref.next_batch() for _ in range(20)]  # crosses epoch boundaries (6 steps/epoch)
    resumed = TokenLoader(data_dir, "train", 16, 2, rank=1, world_size=2, seed=11)
    resumed.load_state_dict(state)
    for (ex, ey), (gx, gy) in zip(expected, (resumed.next_batch() for _ in range(20)), strict=True):
        assert torch.equal(ex, gx) and torch.equal(ey, gy)
    assert resumed.state_dict() == ref.state_dict()
    # rank 0 can restore from rank 1's saved state: the state is rank-independent
    other = TokenLoader(data_dir, "train", 16, 2, rank=0, world_size=2, seed=11)
    other.load_state_dict(state)
    assert (other.epoch, other.position) == (0, 5)


def test_load_state_dict_rejects_mismatches(data_dir: Path) -> None:
    state = TokenLoader(data_dir, "train", 16, 2, world_size=2, seed=1).state_dict()
    with pytest.raises(DataError, match=r"seq_len was 16 when saved, now 8"):
        TokenLoader(data_dir, "train", 8, 2, world_size=2, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match=r"seed was 1 when saved, now 2"):
        TokenLoader(data_dir, "train", 16, 2, world_size=2, seed=2).load_state_dict(state)
    with pytest.raises(DataError, match="invalid epoch/position"):
        TokenLoader(data_dir, "train", 16, 2, world_size=2, seed=1).load_state_dict({**state, "samples": 999})
    with pytest.raises(DataError, match="unsupported or corrupt"):
        TokenLoader(data_dir, "train", 16, 2, world_size=2, seed=1).load_state_dict({"epoch": 0})


def test_too_little_data_is_an_error_with_numbers(data_dir: Path) -> None:
    # val: 70 tokens -> 4 samples of 17 tokens; 2 ranks x 4 need 8
    with pytest.raises(
        DataError,
        match=r"split 'val' is too small: 70 tokens in 1 shards give 4 samples of seq_len\+1 = 17 "
        r"tokens, but 2 ranks x micro batch 4 need at least 8",
    ):
        TokenLoader(data_dir, "val", 16, 4, rank=0, world_size=2, seed=0)
    ld = TokenLoader(data_dir, "val", 16, 2, rank=1, world_size=2, seed=0)  # exactly enough
    assert ld.steps_per_epoch == 1
    with pytest.raises(DataError, match="largest shard has 200 tokens"):
        TokenLoader(data_dir, "train", 500, 1)  # no shard holds even one window


def test_missing_split_and_bad_rank(tmp_path: Path) -> None:
    d = make_token_dir(tmp_path / "noval", train=[100])
    with pytest.raises(DataError, match="split 'val' has no shards"):
        TokenLoader(d, "val", 8, 1)
    with pytest.raises(DataError, match="unknown split 'test'"):
        TokenLoader(d, "test", 8, 1)
    with pytest.raises(DataError, match="rank 2 is outside world_size 2"):
        TokenLoader(d, "train", 8, 1, rank=2, world_size=2)


def test_truncated_shard_fails_loader_start_by_name(data_dir: Path) -> None:
    p = data_dir / "train_00002.bin"
    p.write_bytes(p.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"train_00002\.bin: truncated"):
        TokenLoader(data_dir, "train", 16, 2)


def test_loader_on_prepared_data(tmp_path: Path) -> None:
    from mltrain.config import RunConfig
    from mltrain.data.prepare import prepare_data

    cfg = RunConfig.model_validate(
        {
            "name": "l",
            "model": {"preset": "tiny", "vocab_size": 512},
            "data": {
                "sources": ["builtin:python-stdlib"],
                "max_source_bytes": 40_000,
                "dir": str(tmp_path / "p"),
                "shard_tokens": 4000,
                "val_fraction": 0.1,
            },
        }
    )
    m = prepare_data(cfg)
    ld = TokenLoader(tmp_path / "p", "train", 32, 4, rank=0, world_size=2, seed=0)
    x, y = ld.next_batch()
    assert x.shape == (4, 32) and int(x.max()) < m.vocab_size and torch.equal(x[:, 1:], y[:, :-1])
    assert TokenLoader(tmp_path / "p", "val", 32, 1).next_batch()[0].shape == (1, 32)


def global_steps(loaders: list[TokenLoader], steps: int, accum: int) -> list[list[int]]:
    """The global samples (first token of each window names it) of each optimizer step."""
    out = []
    for _ in range(steps):
        ids: list[int] = []
        for _ in range(accum):
            for ld in loaders:
                ids += ld.next_batch()[0][:, 0].tolist()
        out.append(sorted(ids))
    return out


def test_resume_on_another_world_size_continues_the_global_sample_sequence(data_dir: Path) -> None:
    """2 ranks -> 1 rank (grad_accum 2) -> 2 ranks: the same samples in every optimizer step as an
    uninterrupted 2-rank run, across an epoch boundary (6 steps of 4 samples per epoch)."""

    def ranks(world: int, accum: int) -> list[TokenLoader]:
        return [TokenLoader(data_dir, "train", 16, 2, r, world, seed=5, grad_accum_steps=accum) for r in range(world)]

    ref = global_steps(ranks(2, 1), 10, 1)
    two = ranks(2, 1)
    got = global_steps(two, 3, 1)
    one = ranks(1, 2)
    one[0].load_state_dict(json.loads(json.dumps(two[1].state_dict())))
    got += global_steps(one, 4, 2)
    assert one[0].state_dict()["samples"] == 4 and one[0].epoch == 1  # 7 steps x 4, epoch of 24
    again = ranks(2, 1)
    for ld in again:
        ld.load_state_dict(one[0].state_dict())
    got += global_steps(again, 3, 1)
    assert got == ref
    assert len({s for step in ref[:6] for s in step}) == 24  # no sample twice within the epoch


def test_resume_layout_that_cannot_continue_is_refused(data_dir: Path) -> None:
    two = TokenLoader(data_dir, "train", 16, 2, 0, 2, seed=5)
    for _ in range(3):
        two.next_batch()  # 12 global samples consumed
    with pytest.raises(DataError, match=r"12 samples of epoch 0 .* not a multiple of 1 ranks x micro batch 8 = 8"):
        TokenLoader(data_dir, "train", 16, 8, 0, 1, seed=5).load_state_dict(two.state_dict())


def test_version_1_state_still_resumes(data_dir: Path) -> None:
    ref = TokenLoader(data_dir, "train", 16, 2, 1, 2, seed=5)
    for _ in range(2):
        ref.next_batch()
    old = {**ref.state_dict(), "version": 1}
    del old["samples"]
    ld = TokenLoader(data_dir, "train", 16, 2, 1, 2, seed=5)
    ld.load_state_dict(old)
    assert torch.equal(ld.next_batch()[0], ref.next_batch()[0])


def test_out_of_vocabulary_id_names_shard_and_offset(tmp_path: Path) -> None:
    """Ids are 0..224 in order; with vocab_size 200 only the last window of the second shard (token
    offsets 64..80 of train_00001.bin, ids 194..210) holds bad ids, the first at offset 70 (id 200)."""
    d = make_token_dir(tmp_path / "oov", train=[130, 95])
    ld = TokenLoader(d, "train", 16, 13, vocab_size=200)  # all 13 samples in one batch
    with pytest.raises(DataError) as e:
        ld.next_batch()
    msg = str(e.value)
    assert msg.startswith(f"{d / 'train_00001.bin'}: token id 200 at token offset 70 is >= vocab_size 200")
    assert "\n" not in msg
