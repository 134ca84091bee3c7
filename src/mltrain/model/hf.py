"""Hugging Face interoperability: import Llama / Qwen2 checkpoints, export runs in HF format.

Import: `load_hf_config` maps config.json to a ModelConfig; `hf_state_dict_iter` streams the
*.safetensors tensors one at a time under mltrain's names (never a second full copy of the model);
`load_hf_weights` copies them into a model, plain or FSDP2-sharded (DTensor parameters: each rank
reads only its own slice of each tensor from the memory-mapped file, no communication).

Export: `export_state_dict` writes config.json, model.safetensors (sharded above `max_shard_gb`, with
the standard index), generation_config.json and tokenizer files into `OUT.tmp`, then renames it to
OUT, so OUT is either the previous export or the complete new one. `export_run` does that for a
run's checkpoint. The result loads with `transformers.AutoModelForCausalLM.from_pretrained(OUT)`.

Our module names already use HF's RoPE layout (rotate_half), so the weights map 1:1, no permutation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from mltrain.config import HF_CONFIG_FILE as CONFIG_FILE
from mltrain.config import HF_SUPPORTED as SUPPORTED  # noqa: F401  (part of the HF API here)
from mltrain.config import ModelConfig, hf_config_to_model_config, load_hf_config  # noqa: F401
from mltrain.config import read_hf_config as _read_hf_config
from mltrain.errors import CheckpointError, ConfigError, DataError
from mltrain.model.transformer import Transformer

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
_DTYPE_NAME = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}

# HF name -> our name, per layer (the "model.layers.N." prefix is handled by the regex below).
_LAYER_MAP = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.q_proj.bias": "attention.wq.bias",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.k_proj.bias": "attention.wk.bias",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.v_proj.bias": "attention.wv.bias",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_LAYER_MAP_INV = {v: k for k, v in _LAYER_MAP.items()}
_TOP_MAP = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_TOP_MAP_INV = {v: k for k, v in _TOP_MAP.items()}
_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_OUR_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)$")
# Old checkpoints saved RoPE caches; they are recomputed, never loaded.
_HF_IGNORED_RE = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")


def hf_to_ours(name: str) -> str | None:
    """mltrain name for an HF tensor name, or None when it is not one of ours."""
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    m = _HF_LAYER_RE.match(name)
    if m and m.group(2) in _LAYER_MAP:
        return f"layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    return None


def ours_to_hf(name: str) -> str:
    if name in _TOP_MAP_INV:
        return _TOP_MAP_INV[name]
    m = _OUR_LAYER_RE.match(name)
    if m and m.group(2) in _LAYER_MAP_INV:
        return f"model.layers.{m.group(1)}.{_LAYER_MAP_INV[m.group(2)]}"
    raise CheckpointError(f"parameter {name!r} has no Hugging Face name (is this an mltrain Transformer state?)")


def _shown(items: list[str], n: int = 10) -> str:
    return "; ".join(items[:n]) + (f"; ... {len(items) - n} more" if len(items) > n else "")


# --------------------------------------------------------------------------- config


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


# --------------------------------------------------------------------------- weights (import)


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


def _expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        m = Transformer(cfg)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


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
                    if not _HF_IGNORED_RE.search(hf_name):
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
        raise CheckpointError(f"{path}: checkpoint does not fit the model: {_shown(problems)}")
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
        expected = _expected_shapes(cfg)
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
    params = _strip_prefixes(model.state_dict(keep_vars=True))
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


# --------------------------------------------------------------------------- export


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept states from torch.compile'd, DDP- or checkpoint-wrapped modules too."""
    out = {}
    for k, v in state.items():
        for p in ("_orig_mod.", "module.", "_checkpoint_wrapped_module."):
            k = k.replace(p, "")
        out[k] = v
    return out


def hf_config_dict(
    cfg: ModelConfig, dtype: torch.dtype, bos_id: int | None = None, eos_id: int | None = None
) -> dict[str, Any]:
    """config.json for the family: Qwen2ForCausalLM when cfg.qkv_bias, else LlamaForCausalLM.

    Uses the classic keys (rope_theta + rope_scaling, torch_dtype) that transformers 4.x reads and
    5.x still maps; `dtype` is written too for 5.x.
    """
    qwen = cfg.qkv_bias
    d: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
        "model_type": "qwen2" if qwen else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.ffn_hidden_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": (
            {"rope_type": "llama3", **cfg.rope_scaling.model_dump(exclude={"rope_type"})} if cfg.rope_scaling else None
        ),
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "attention_dropout": 0.0,
        "use_cache": True,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": _DTYPE_NAME[dtype],
        "dtype": _DTYPE_NAME[dtype],
    }
    if qwen:
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
    else:
        d.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    return d


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPE_NAME:
            return dtype
    elif dtype in DTYPES:
        return DTYPES[dtype]
    raise ConfigError(f"export dtype {dtype!r}: expected bf16, fp16 or fp32")


def _tokenizer_config(tok_path: Path, cfg: ModelConfig, bos_id: int | None, eos_id: int | None) -> dict[str, Any]:
    """A minimal tokenizer_config.json so AutoTokenizer builds a PreTrainedTokenizerFast from tokenizer.json."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    d: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": cfg.max_seq_len,
        "clean_up_tokenization_spaces": False,
    }
    if bos_id is not None and tok.id_to_token(bos_id) is not None:
        d["bos_token"] = tok.id_to_token(bos_id)
    if eos_id is not None and tok.id_to_token(eos_id) is not None:
        d["eos_token"] = tok.id_to_token(eos_id)
    return d


_TOKENIZER_PROBES = (
    "Hello world! 12345 + 678",
    "def f(x):\n    return x  # \u00fcn\u00efc\u00f6d\u00e9",
    "  a  b\t\tc",
)


def _covered_probes(tok: Any) -> list[str]:
    """Probe texts the vocabulary can encode: a closed vocabulary (char-level, no UNK) cannot encode
    arbitrary text, so when it rejects every fixed probe, text made of its own tokens is used."""
    probes = []
    for text in _TOKENIZER_PROBES:
        try:
            tok.encode(text, add_special_tokens=False)
        except Exception:
            continue
        probes.append(text)
    if not probes:
        special = {t.content for t in tok.get_added_tokens_decoder().values()}
        vocab = sorted(tok.get_vocab(with_added_tokens=False).items(), key=lambda kv: kv[1])
        own = [i for t, i in vocab if t not in special]
        probes.append(tok.decode(own[:200]))
    return probes


def _autotokenizer_problem(model_dir: Path, tok_path: Path) -> str | None:
    """Does `AutoTokenizer.from_pretrained(model_dir)` encode like the tokenizer we trained with?

    transformers >= 5 ignores tokenizer_config's class for model_type qwen2 and rebuilds the
    pipeline as Qwen2Tokenizer (Qwen's pre-tokenizer), which is wrong for a non-Qwen tokenizer.
    Returns a one-line warning, or None when they agree (or transformers is not installed).
    """
    try:
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        ours = Tokenizer.from_file(str(tok_path))
        theirs = AutoTokenizer.from_pretrained(str(model_dir))
        for text in _covered_probes(ours):
            if theirs(text, add_special_tokens=False)["input_ids"] != ours.encode(text, add_special_tokens=False).ids:
                return (
                    f"AutoTokenizer ({type(theirs).__name__}) tokenizes differently from tokenizer.json; "
                    "load it with PreTrainedTokenizerFast(tokenizer_file=OUT/tokenizer.json) instead"
                )
    except Exception as e:  # a reference check only: never fail an export because of it
        return f"could not check the tokenizer with transformers.AutoTokenizer: {e}"
    return None


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished tmp dir to `out`; an existing out is swapped out first and deleted last."""
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        looks_hf = (out / CONFIG_FILE).exists()
        if not overwrite:
            raise CheckpointError(
                f"{out}: already exists and is not empty; choose a new --hf directory"
                + (" or remove the old export first" if looks_hf else "")
            )
        if not looks_hf:
            raise CheckpointError(
                f"{out}: exists and is not a Hugging Face model dir (no config.json); refusing to replace it"
            )


def export_state_dict(
    model_state: Mapping[str, torch.Tensor],
    cfg: ModelConfig,
    out_dir: str | Path,
    dtype: str | torch.dtype = "bf16",
    tokenizer_dir: str | Path | None = None,
    max_shard_gb: float = 5.0,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
) -> Path:
    """Write an mltrain model state dict as a Hugging Face model directory; returns out_dir.

    Atomic: everything goes to `<out_dir>.tmp`, which is renamed to out_dir only when complete.
    An existing non-empty out_dir is an error unless overwrite=True (and it holds a config.json).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    tdtype = _parse_dtype(dtype)
    _check_out_dir(out, overwrite)
    state = _strip_prefixes(model_state)
    expected = _expected_shapes(cfg)
    problems = [f"missing {k}" for k in sorted(set(expected) - set(state))]
    problems += [f"unexpected {k}" for k in sorted(set(state) - set(expected))]
    problems += [
        f"{k}: state {list(state[k].shape)} vs config {list(expected[k])}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != expected[k]
    ]
    if problems:
        raise CheckpointError(f"model state does not fit the model config: {_shown(problems)}")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tok_dir is not None and not (tok_dir / "tokenizer.json").exists():
        raise DataError(f"{tok_dir / 'tokenizer.json'}: missing; cannot export the tokenizer")

    # Plan shards by size (in the export dtype), in a stable HF order.
    names = sorted(expected, key=_export_order)
    itemsize = torch.empty((), dtype=tdtype).element_size()
    max_bytes = max(1, int(max_shard_gb * 1024**3))
    shards: list[list[str]] = [[]]
    size = 0
    for k in names:
        nbytes = state[k].numel() * itemsize
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += nbytes
    total = sum(state[k].numel() * itemsize for k in names)

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)  # leftover of an interrupted export: never a finished one
    tmp.mkdir(parents=True)
    try:
        files = (
            [SINGLE_FILE]
            if len(shards) == 1
            else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
        )
        weight_map = {}
        shard_iter: Any = zip(files, shards, strict=True)
        if show_progress:
            from rich.progress import track

            shard_iter = track(list(shard_iter), description=f"writing {out.name}", transient=True)
        for fname, keys in shard_iter:
            tensors = {}
            for k in keys:
                t = state[k]
                if hasattr(t, "full_tensor"):  # a sharded DTensor: every rank would write the same files
                    raise CheckpointError(
                        f"{k} is a sharded DTensor; export a full state dict on one rank "
                        "(get_model_state_dict(..., full_state_dict=True, cpu_offload=True))"
                    )
                tensors[ours_to_hf(k)] = t.detach().to(device="cpu", dtype=tdtype).contiguous()
                weight_map[ours_to_hf(k)] = fname
            save_file(tensors, str(tmp / fname), metadata={"format": "pt"})
            os.chmod(tmp / fname, 0o666 & ~_umask())  # safetensors creates 0600; exports are meant to be shared
            del tensors
        if len(shards) > 1:
            _write_json(tmp / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
        _write_json(tmp / CONFIG_FILE, hf_config_dict(cfg, tdtype, bos_id, eos_id))
        gen = {"_from_model_config": True, "bos_token_id": bos_id, "eos_token_id": eos_id}
        _write_json(tmp / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
        if tok_dir is not None:
            for f in TOKENIZER_FILES:
                if (tok_dir / f).exists():
                    shutil.copyfile(tok_dir / f, tmp / f)
            if not (tok_dir / "tokenizer_config.json").exists():
                _write_json(
                    tmp / "tokenizer_config.json", _tokenizer_config(tok_dir / "tokenizer.json", cfg, bos_id, eos_id)
                )
            problem = _autotokenizer_problem(tmp, tok_dir / "tokenizer.json")
            if problem:
                from rich.console import Console

                Console(stderr=True).print(f"[yellow]warning:[/] {out}: {problem}")
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _export_order(name: str) -> tuple[int, int, str]:
    if name == "tok_embeddings.weight":
        return (0, 0, name)
    m = _OUR_LAYER_RE.match(name)
    if m:
        return (1, int(m.group(1)), name)
    return (2, 0, name)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def export_run(
    run_dir: Path,
    out_dir: Path,
    step: int | None = None,
    dtype: str = "bf16",
    overwrite: bool = False,
    max_shard_gb: float = 5.0,
) -> Path:
    """Export a run's checkpoint (newest, or `step`) with its data dir's tokenizer as an HF model dir."""
    from rich.console import Console
    from rich.markup import escape

    from mltrain.config import load_run_config
    from mltrain.train.checkpoint import load_model_state_dict, require_checkpoint

    run_dir = Path(run_dir)
    tdtype = _parse_dtype(dtype)
    _check_out_dir(Path(out_dir), overwrite)
    cfg = load_run_config(run_dir / "config.yaml")
    console = Console(stderr=True, soft_wrap=True)  # one line per message, never wrapped
    picked = require_checkpoint(
        run_dir, lambda m: console.print(f"[yellow]warning:[/] {escape(m)}", highlight=False), step
    )
    ckpt = picked[1]
    why = "as requested" if step is not None else "the newest valid checkpoint"
    console.print(escape(f"exporting step {picked[0]} ({why}) from {ckpt}"), highlight=False)

    model_cfg = cfg.model
    if model_cfg.init_from and (Path(model_cfg.init_from) / CONFIG_FILE).exists():
        # training on shorter sequences must not shrink the context the exported model advertises
        hf_max = _read_hf_config(Path(model_cfg.init_from)).get("max_position_embeddings") or 0
        model_cfg = model_cfg.model_copy(update={"max_seq_len": max(model_cfg.max_seq_len, int(hf_max))})
    tok_dir, bos_id, eos_id = _run_tokenizer(cfg.data.dir, cfg.model)
    if tok_dir is None:
        from rich.console import Console

        Console(stderr=True).print(
            f"[yellow]warning:[/] no tokenizer.json in {cfg.data.dir} (data.dir) or "
            "model.init_from; exporting the weights without tokenizer files"
        )
    model = Transformer(cfg.model)
    load_model_state_dict(ckpt, model)
    return export_state_dict(
        model.state_dict(),
        model_cfg,
        out_dir,
        tdtype,
        tok_dir,
        max_shard_gb,
        bos_id=bos_id,
        eos_id=eos_id,
        overwrite=overwrite,
        show_progress=True,
    )


def _run_tokenizer(data_dir: str | Path, model_cfg: ModelConfig) -> tuple[Path | None, int | None, int | None]:
    """The run's tokenizer dir and (bos, eos) ids, checked against the data manifest and the model.

    Preference: the data dir (what the run was trained on); else the init_from dir. None when neither
    has a tokenizer.json (the export then has weights only).
    """
    from tokenizers import Tokenizer

    data_dir = Path(data_dir)
    tok_path = data_dir / "tokenizer.json"
    if tok_path.exists():
        tok = Tokenizer.from_file(str(tok_path))
        vocab = tok.get_vocab_size(with_added_tokens=True)
        eos_id = None
        if (data_dir / "manifest.json").exists():
            from mltrain.data.manifest import load_manifest

            man = load_manifest(data_dir)
            if man.vocab_size != vocab:
                raise DataError(
                    f"{tok_path}: tokenizer has {vocab} tokens but {data_dir}/manifest.json says "
                    f"{man.vocab_size}; the data dir's tokenizer changed after prepare"
                )
            import hashlib

            if hashlib.sha256(tok_path.read_bytes()).hexdigest() != man.tokenizer.sha256:
                raise DataError(
                    f"{tok_path}: sha256 differs from {data_dir}/manifest.json; the tokenizer was "
                    "replaced after the data was prepared (re-run `mltrain data prepare`)"
                )
            eos_id = man.eos_id
        if vocab > model_cfg.vocab_size:
            raise DataError(
                f"{tok_path}: tokenizer has {vocab} tokens, more than model.vocab_size "
                f"{model_cfg.vocab_size}; the exported model could not embed them"
            )
        bos_id = _hf_bos(model_cfg)
        if model_cfg.init_from:
            hf_tok = Path(model_cfg.init_from) / "tokenizer.json"
            if hf_tok.exists() and hf_tok.read_bytes() == tok_path.read_bytes():
                data_dir = Path(model_cfg.init_from)  # same tokenizer: keep its tokenizer_config (chat template)
        return data_dir, bos_id, eos_id
    if model_cfg.init_from and (Path(model_cfg.init_from) / "tokenizer.json").exists():
        hf = _read_hf_config(Path(model_cfg.init_from))
        return Path(model_cfg.init_from), hf.get("bos_token_id"), _first(hf.get("eos_token_id"))
    return None, None, None


def _hf_bos(model_cfg: ModelConfig) -> int | None:
    if model_cfg.init_from and (Path(model_cfg.init_from) / CONFIG_FILE).exists():
        return _read_hf_config(Path(model_cfg.init_from)).get("bos_token_id")
    return None


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list) and x else x
