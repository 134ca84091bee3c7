"""Deterministic, resumable, data-parallel token batches straight from memory-mapped shards.

Samples are windows of seq_len+1 tokens at stride seq_len inside each shard (inputs = w[:-1],
targets = w[1:]); windows never cross a shard boundary. For epoch e the order of all samples is
a permutation drawn from PCG64 seeded with (seed, e), so it is a pure function of (seed, epoch)
and identical on every rank. The ranks walk that order together, one micro-step block of
W x B samples at a time: in the block starting at global position g, rank r takes
g + r, g + r + W, ..., g + r + (B-1)W. An epoch uses the largest multiple of the global batch
(W x B x grad_accum) that fits, so every rank runs the same number of steps and no sample is seen
twice in an epoch.

The state is (epoch, global samples consumed): it names a point in the global order, not a
per-rank position, so a checkpoint written by W ranks resumes on W' ranks (the trainer keeps the
global batch by changing grad_accum) and the sequence of global samples is the same as if the run
had never stopped. On the same world size a restored loader gives exactly the original batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mltrain.data.shards import open_shard
from mltrain.data.validate import check_manifest_consistency
from mltrain.errors import DataError

STATE_VERSION = 2


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
        grad_accum_steps: int = 1,
        vocab_size: int | None = None,
    ) -> None:
        """`vocab_size`: ids at or above it are refused with the shard and offset (default: the
        manifest's tokenizer vocabulary)."""
        if seq_len <= 0 or micro_batch_size <= 0 or grad_accum_steps <= 0:
            raise DataError(
                f"seq_len ({seq_len}), micro_batch_size ({micro_batch_size}) and grad_accum_steps "
                f"({grad_accum_steps}) must be > 0"
            )
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
        self.vocab_size = int(vocab_size if vocab_size is not None else manifest.vocab_size)
        self._files = [self.data_dir / s.file for s in shards]
        self._maps = [open_shard(self.data_dir / s.file, s.tokens, manifest.dtype) for s in shards]
        # Windows need seq_len+1 tokens; a shard of n tokens holds (n-1)//seq_len of them.
        per_shard = np.array([max(0, (m.size - 1) // seq_len) for m in self._maps], dtype=np.int64)
        self._cum = np.cumsum(per_shard)
        self.num_samples = int(self._cum[-1])
        self.total_tokens = sum(int(m.size) for m in self._maps)
        self.grad_accum_steps = grad_accum_steps
        self.block = world_size * micro_batch_size  # global samples per micro-step
        self.global_batch = self.block * grad_accum_steps  # global samples per optimizer step
        self.samples_per_epoch = (self.num_samples // self.global_batch) * self.global_batch
        self.samples_per_rank = self.samples_per_epoch // world_size
        self.steps_per_epoch = self.samples_per_epoch // self.block  # micro-steps per epoch, every rank
        if self.steps_per_epoch == 0:
            largest = max(int(m.size) for m in self._maps)
            hint = (
                f" (samples never cross shard boundaries and the largest shard has {largest} tokens)"
                if largest < seq_len + 1
                else ""
            )
            accum = f" x grad_accum {grad_accum_steps}" if grad_accum_steps > 1 else ""
            raise DataError(
                f"{self.data_dir}: split {split!r} is too small: {self.total_tokens} tokens in {len(shards)} shards "
                f"give {self.num_samples} samples of seq_len+1 = {seq_len + 1} tokens, but {world_size} ranks x "
                f"micro batch {micro_batch_size}{accum} need at least {self.global_batch}{hint}"
            )
        self.epoch = 0
        self.consumed = 0  # global samples consumed in this epoch (all ranks together)
        self._order_epoch = -1
        self._order = np.zeros(0, dtype=np.int64)

    @property
    def position(self) -> int:
        """Micro-batches this rank has taken in the epoch."""
        return self.consumed // self.block

    # ------------------------------------------------------------------ order

    def _epoch_order(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            self._order = epoch_order(self.seed, self.epoch, self.num_samples)
            self._order_epoch = self.epoch
        return self._order

    def next_samples(self) -> np.ndarray:
        """Global sample ids of this rank's next micro-batch (does not advance)."""
        if self.consumed >= self.samples_per_epoch:
            self.epoch += 1
            self.consumed = 0
        idx = self.consumed + self.rank + self.world_size * np.arange(self.micro_batch_size)
        return self._epoch_order()[idx]

    def _locate(self, sample: int) -> tuple[int, int]:
        """(shard index, token offset of the window in that shard)."""
        shard = int(np.searchsorted(self._cum, sample, side="right"))
        return shard, (sample - (int(self._cum[shard - 1]) if shard else 0)) * self.seq_len

    def _window(self, sample: int) -> np.ndarray:
        shard, start = self._locate(sample)
        window = self._maps[shard][start : start + self.seq_len + 1]
        if window.size and int(window.max()) >= self.vocab_size:
            bad = int(np.argmax(window >= self.vocab_size))
            raise DataError(
                f"{self._files[shard]}: token id {int(window[bad])} at token offset {start + bad} is >= "
                f"vocab_size {self.vocab_size}; the shard is corrupt or was written with another tokenizer "
                "(re-run `mltrain data prepare`)"
            )
        return window

    # ------------------------------------------------------------------ batches

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (inputs, targets), both LongTensor [B, T] on CPU; epochs roll over by themselves."""
        samples = self.next_samples()
        batch = np.stack([self._window(int(s)) for s in samples]).astype(np.int64)
        self.consumed += self.block
        x = torch.from_numpy(batch)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def __iter__(self):
        while True:
            yield self.next_batch()

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable; identical on all ranks except `rank` (so rank 0's copy restores any rank).

        `samples` (global samples consumed in `epoch`) is what a resume continues from; world_size,
        micro_batch_size and position are recorded for people and older readers."""
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "epoch": self.epoch,
            "samples": self.consumed,
            "position": self.position,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "micro_batch_size": self.micro_batch_size,
            "world_size": self.world_size,
            "global_batch": self.global_batch,
            "rank": self.rank,
            "num_samples": self.num_samples,
            "tokenizer_sha256": self.manifest.tokenizer.sha256,
            "corpus_fingerprint": self.manifest.corpus_fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at the same global sample; DataError when the data or sample order differ from
        then, or when the new layout cannot continue there (not a multiple of world x micro batch)."""
        if not isinstance(state, dict) or state.get("version") not in (1, STATE_VERSION):
            raise DataError(
                f"loader state: unsupported or corrupt state (version {state.get('version')!r})"
                if isinstance(state, dict)
                else "loader state: not a dict"
            )
        mine = self.state_dict()
        for key in ("split", "seed", "seq_len", "num_samples", "tokenizer_sha256", "corpus_fingerprint"):
            if state.get(key) != mine[key]:
                raise DataError(
                    f"loader state: {key} was {state.get(key)!r} when saved, now {mine[key]!r}; "
                    "resume with the same data and sequence length, or start a new run"
                )
        epoch = state.get("epoch")
        if state["version"] == 1:  # per-rank position; version 1 walked the same interleaved order
            pos, b, w = state.get("position"), state.get("micro_batch_size"), state.get("world_size")
            ok = all(isinstance(v, int) and v >= 0 for v in (pos, b, w))
            samples = pos * b * w if ok else None
        else:
            samples = state.get("samples")
        if not (
            isinstance(epoch, int) and isinstance(samples, int) and epoch >= 0 and 0 <= samples <= self.num_samples
        ):
            raise DataError(f"loader state: invalid epoch/position {epoch!r}/{samples!r}")
        if samples % self.block:
            raise DataError(
                f"loader state: {samples} samples of epoch {epoch} were consumed, which is not a multiple of "
                f"{self.world_size} ranks x micro batch {self.micro_batch_size} = {self.block}; resume with a "
                "layout whose world_size x micro_batch_size divides it"
            )
        self.epoch, self.consumed = epoch, samples
