"""Import a Hugging Face Llama / Qwen2 checkpoint's weights, and check a run's model fits one.

`hf_state_dict_iter` streams the *.safetensors tensors one at a time under mltrain's names (never a
second full copy of the model); `load_hf_weights` copies them into a model, plain or FSDP2-sharded
(DTensor parameters: each rank reads only its own slice of each tensor from the memory-mapped file,
no communication). Every name and shape is checked from the safetensors headers before any data is
read. `check_hf_matches` is the start check of a run with `model.init_from` (config + file list, no
weights).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from mltrain.config import ModelConfig, load_hf_config
from mltrain.errors import CheckpointError, ConfigError
from mltrain.model.hf.names import (
    HF_IGNORED_RE,
    INDEX_FILE,
    expected_shapes,
    hf_to_ours,
    ours_to_hf,
    shown,
    strip_prefixes,
)
from mltrain.model.transformer import Transformer

_SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "ffn_hidden_size",
    "rope_theta",
    "rope_scaling",
    "norm_eps",
    "qkv_bias",
    "tie_embeddings",
)


def check_matches_hf(run_model: ModelConfig, hf_model: ModelConfig, source: str = "model") -> None:
    """ConfigError listing every field where the run config's model disagrees with the HF config.

    max_seq_len and init_std are free: a run may train on shorter sequences than the checkpoint allows.
    """
    diffs = []
    for f in _SHAPE_FIELDS:
        a, b = getattr(run_model, f), getattr(hf_model, f)
        if a != b:
            diffs.append(
                f"{f}: run {a if not hasattr(a, 'model_dump') else a.model_dump()} "
                f"vs checkpoint {b if not hasattr(b, 'model_dump') else b.model_dump()}"
            )
    if diffs:
        raise ConfigError(f"{source}: model disagrees with init_from {hf_model.init_from or ''}: {'; '.join(diffs)}")


def check_hf_matches(run_model: ModelConfig, path: str | Path, source: str = "run config") -> ModelConfig:
    """The HF ModelConfig of `path`, after checking the run's model agrees with it (ConfigError listing
    every difference) and that the weights files exist (CheckpointError). Reads no weights."""
    hf = load_hf_config(path)
    check_matches_hf(run_model, hf, f"{source}: model.init_from")
    _safetensors_files(Path(path))
    return hf


def check_init_from(run_model: ModelConfig, source: str = "run config") -> ModelConfig | None:
    """check_hf_matches for a run config's `model.init_from`; None when it has none."""
    if not run_model.init_from:
        return None
    return check_hf_matches(run_model, run_model.init_from, source)


def _safetensors_files(path: Path) -> dict[str, Path]:
    """HF tensor name -> file holding it (sharded via the index, or every *.safetensors)."""
    index = path / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{index}: unreadable index: {e}") from None
        files = {name: path / fname for name, fname in weight_map.items()}
        missing = sorted({str(p.name) for p in files.values() if not p.exists()})
        if missing:
            raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
        return files
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        extra = " (found pytorch_model.bin: convert it to safetensors)" if (path / "pytorch_model.bin").exists() else ""
        raise CheckpointError(f"{path}: no *.safetensors files{extra}")
    from safetensors import safe_open

    files = {}
    for f in shards:
        with safe_open(str(f), framework="pt") as sf:
            for k in sf.keys():  # noqa: SIM118 (safe_open is not a dict)
                files[k] = f
    return files


def _load_plan(
    path: Path, cfg: ModelConfig, expected: Mapping[str, tuple[int, ...]]
) -> list[tuple[Path, list[tuple[str, str]]]]:
    """[(file, [(our name, hf name), ...])]: checked against `expected` from the headers alone."""
    from safetensors import safe_open

    files = _safetensors_files(path)
    plan: list[tuple[str, str, Path]] = []  # (our name, hf name, file)
    unexpected, mis_shaped = [], []
    by_file: dict[Path, list[str]] = {}
    for hf_name, f in files.items():
        by_file.setdefault(f, []).append(hf_name)
    for f, names in by_file.items():
        with safe_open(str(f), framework="pt") as sf:
            for hf_name in names:
                ours = hf_to_ours(hf_name)
                if ours == "output.weight" and cfg.tie_embeddings:
                    continue  # tied: the head is the embedding, whatever the file says
                if ours is None or ours not in expected:
                    if not HF_IGNORED_RE.search(hf_name):
                        unexpected.append(hf_name)
                    continue
                shape = tuple(sf.get_slice(hf_name).get_shape())
                if shape != tuple(expected[ours]):
                    mis_shaped.append(f"{hf_name}: checkpoint {list(shape)} vs model {list(expected[ours])}")
                plan.append((ours, hf_name, f))
    missing = sorted(set(expected) - {p[0] for p in plan})
    problems = (
        [f"missing {ours_to_hf(k)}" for k in missing]
        + [f"unexpected {k}" for k in sorted(unexpected)]
        + sorted(mis_shaped)
    )
    if problems:
        raise CheckpointError(f"{path}: checkpoint does not fit the model: {shown(problems)}")
    return _group_by_file(plan)


def hf_state_dict_iter(
    path: str | Path, cfg: ModelConfig | None = None, expected: Mapping[str, tuple[int, ...]] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (our_name, CPU tensor in the file's dtype) one tensor at a time from an HF directory.

    Before yielding anything, checks names and shapes (from the safetensors headers, no data read)
    against `expected` (default: the shapes of a Transformer(cfg), cfg default: the dir's config.json)
    and raises CheckpointError listing missing, unexpected and mis-shaped tensors. A tied model
    ignores `lm_head.weight`. Memory: one tensor at a time (safetensors mmaps the file).
    """
    from safetensors import safe_open

    path = Path(path)
    if cfg is None:
        cfg = load_hf_config(path)
    if expected is None:
        expected = expected_shapes(cfg)
    for f, group in _load_plan(path, cfg, expected):
        with safe_open(str(f), framework="pt") as sf:
            for ours, hf_name in group:
                yield ours, sf.get_tensor(hf_name)


def _group_by_file(plan: list[tuple[str, str, Path]]) -> list[tuple[Path, list[tuple[str, str]]]]:
    groups: dict[Path, list[tuple[str, str]]] = {}
    for ours, hf_name, f in plan:
        groups.setdefault(f, []).append((ours, hf_name))
    return list(groups.items())


@torch.no_grad()
def load_hf_weights(model: torch.nn.Module, path: str | Path, show_progress: bool = False) -> None:
    """Copy an HF checkpoint's weights into `model` (already materialised: not on meta).

    Works for a plain model and for FSDP2 (`fully_shard`, also after to_empty) models: for a DTensor
    parameter each rank reads only its own slice of the tensor from the (shared, memory-mapped) file and
    copies it into its local shard; no collective, no full tensor on any GPU. dtype is converted to the
    parameter's. Call it on every rank.
    """
    from safetensors import safe_open

    path = Path(path)
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        cfg = load_hf_config(path)
    params = strip_prefixes(model.state_dict(keep_vars=True))
    expected = {k: tuple(v.shape) for k, v in params.items()}
    if any(t.is_meta for t in params.values()):
        raise CheckpointError("load_hf_weights: the model is still on the meta device; call to_empty() first")

    plan = _load_plan(path, cfg, expected)
    progress = None
    if show_progress:
        from rich.progress import Progress

        progress = Progress(transient=True)
        task = progress.add_task(f"loading {path.name}", total=len(expected))
        progress.start()
    try:
        for f, group in plan:
            with safe_open(str(f), framework="pt") as sf:
                for ours, hf_name in group:
                    _copy_into(params[ours], sf, hf_name)
                    if progress is not None:
                        progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()


def _copy_into(param: torch.Tensor, sf: Any, hf_name: str) -> None:
    from torch.distributed.tensor import DTensor

    if not isinstance(param, DTensor):
        param.copy_(sf.get_tensor(hf_name))
        return
    local = param.to_local()
    region = _local_region(param)
    if region is not None:
        local.copy_(sf.get_slice(hf_name)[region])
        return
    from torch.distributed.tensor import distribute_tensor  # fallback: full tensor, keep own shard

    full = sf.get_tensor(hf_name).to(device=local.device, dtype=param.dtype)
    local.copy_(distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local())


def _local_region(param: Any) -> tuple[slice, ...] | None:
    """The slice of the global tensor this rank's DTensor shard holds (None: use the fallback)."""
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        from torch.distributed.tensor.placement_types import Replicate, Shard

        if not all(isinstance(p, Shard | Replicate) for p in param.placements):
            return None
        shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    except Exception:  # private torch API: fall back rather than fail
        return None
    if tuple(shape) != tuple(param.to_local().shape):
        return None
    return tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))


def build_model_from_hf(path: str | Path, device: torch.device | str = "cpu") -> tuple[Transformer, ModelConfig]:
    """A Transformer with an HF directory's config and weights on `device` (single process).

    Built on meta and materialised with to_empty, so the weights are never initialised twice.
    """
    cfg = load_hf_config(path)
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.rope.reset_parameters()  # the only buffer; every parameter is overwritten below
    load_hf_weights(model, path)
    return model, cfg
