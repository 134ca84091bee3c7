"""Deterministic, resumable, data-parallel token batches straight from memory-mapped shards.

Samples are windows of seq_len+1 tokens at stride seq_len inside each shard (inputs = w[:-1],
targets = w[1:]); windows never cross a shard boundary. For epoch e the order of all samples is
a permutation drawn from PCG64 seeded with (seed, e), so it is a pure function of (seed, epoch)
and identical on every rank; rank r takes positions r, r+W, r+2W, ... of that order after the
tail that does not divide by W is dropped (so every rank runs the same number of steps and no
sample is seen twice in an epoch). The state is just (epoch, position): a restored loader
continues with exactly the batches the original would have produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mltrain.data.shards import open_shard
from mltrain.data.validate import check_manifest_consistency
from mltrain.errors import DataError

STATE_VERSION = 1


def epoch_order(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """The global sample order of an epoch: same on every rank, every run, every machine."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    return rng.permutation(num_samples)


class TokenLoader:
    """Batches of (inputs, targets) int64 tensors [micro_batch_size, seq_len] for one rank."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        seq_len: int,
        micro_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
    ) -> None:
        if seq_len <= 0 or micro_batch_size <= 0:
            raise DataError(f"seq_len ({seq_len}) and micro_batch_size ({micro_batch_size}) must be > 0")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world_size {world_size}")
        self.data_dir = Path(data_dir)
        self.split, self.seq_len, self.micro_batch_size = split, seq_len, micro_batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed

        manifest = check_manifest_consistency(self.data_dir)
        if split not in manifest.splits:
            raise DataError(f"{self.data_dir}: unknown split {split!r}; known: {', '.join(manifest.splits)}")
        shards = manifest.splits[split]
        if not shards:
            raise DataError(f"{self.data_dir}: split {split!r} has no shards (val_fraction 0 or a single document?)")
        self.manifest = manifest
        self._maps = [open_shard(self.data_dir / s.file, s.tokens, manifest.dtype) for s in shards]
        # Windows need seq_len+1 tokens; a shard of n tokens holds (n-1)//seq_len of them.
        per_shard = np.array([max(0, (m.size - 1) // seq_len) for m in self._maps], dtype=np.int64)
        self._cum = np.cumsum(per_shard)
        self.num_samples = int(self._cum[-1])
        self.total_tokens = sum(int(m.size) for m in self._maps)
        self.samples_per_rank = self.num_samples // world_size
        self.steps_per_epoch = self.samples_per_rank // micro_batch_size
        if self.steps_per_epoch == 0:
            largest = max(int(m.size) for m in self._maps)
            hint = (
                f" (samples never cross shard boundaries and the largest shard has {largest} tokens)"
                if largest < seq_len + 1
                else ""
            )
            raise DataError(
                f"{self.data_dir}: split {split!r} is too small: {self.total_tokens} tokens in {len(shards)} shards "
                f"give {self.num_samples} samples of seq_len+1 = {seq_len + 1} tokens, but {world_size} ranks x "
                f"micro batch {micro_batch_size} need at least {world_size * micro_batch_size}{hint}"
            )
        self.epoch = 0
        self.position = 0  # batches already taken in this epoch
        self._order_epoch = -1
        self._order = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ order

    def _rank_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            order = epoch_order(self.seed, self.epoch, self.num_samples)
            self._order = order[: self.samples_per_rank * self.world_size][self.rank :: self.world_size]
            self._order_epoch = self.epoch
        return self._order

    def _window(self, sample: int) -> np.ndarray:
        shard = int(np.searchsorted(self._cum, sample, side="right"))
        start = (sample - (int(self._cum[shard - 1]) if shard else 0)) * self.seq_len
        return self._maps[shard][start : start + self.seq_len + 1]

    # ------------------------------------------------------------------ batches

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (inputs, targets), both LongTensor [B, T] on CPU; epochs roll over by themselves."""
        if self.position >= self.steps_per_epoch:
            self.epoch += 1
            self.position = 0
        b = self.micro_batch_size
        samples = self._rank_order()[self.position * b : (self.position + 1) * b]
        batch = np.stack([self._window(int(s)) for s in samples]).astype(np.int64)
        self.position += 1
        x = torch.from_numpy(batch)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def __iter__(self):
        while True:
            yield self.next_batch()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable; identical on all ranks except `rank` (so rank 0's copy restores any rank)."""
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "micro_batch_size": self.micro_batch_size,
            "world_size": self.world_size,
            "rank": self.rank,
            "num_samples": self.num_samples,
            "tokenizer_sha256": self.manifest.tokenizer.sha256,
            "corpus_fingerprint": self.manifest.corpus_fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where `state` left off; DataError when the loader or data differ from then."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DataError(
                f"loader state: unsupported or corrupt state (version {state.get('version')!r})"
                if isinstance(state, dict)
                else "loader state: not a dict"
            )
        mine = self.state_dict()
        keys = ("split", "seed", "seq_len", "micro_batch_size", "world_size", "num_samples", "tokenizer_sha256")
        for key in (*keys, "corpus_fingerprint"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"loader state: {key} was {state.get(key)!r} when saved, now {mine[key]!r}; "
                    "resume with the same data and batch layout, or start a new run"
                )
        epoch, position = state.get("epoch"), state.get("position")
        if not (
            isinstance(epoch, int)
            and isinstance(position, int)
            and epoch >= 0
            and 0 <= position <= self.steps_per_epoch
        ):
            raise DataError(f"loader state: invalid epoch/position {epoch!r}/{position!r}")
        self.epoch, self.position = epoch, position
