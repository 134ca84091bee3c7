"""Export an mltrain model state as a Hugging Face model directory (Llama or Qwen2 layout).

`export_state_dict` writes config.json, model.safetensors (sharded above `max_shard_gb`, with the
standard index), generation_config.json and tokenizer files into `OUT.tmp`, then renames it to OUT,
so OUT is either the previous export or the complete new one. The result loads with
`transformers.AutoModelForCausalLM.from_pretrained(OUT)`. A run's checkpoint is exported through this
by mltrain.infer.export.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mltrain.config import HF_CONFIG_FILE, ModelConfig
from mltrain.errors import CheckpointError, ConfigError, DataError
from mltrain.fsutil import default_file_mode
from mltrain.model.hf.names import (
    INDEX_FILE,
    SINGLE_FILE,
    expected_shapes,
    export_order,
    ours_to_hf,
    shown,
    strip_prefixes,
)

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


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype of an export: bf16, fp16 or fp32 (or their long names); ConfigError otherwise."""
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


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse an existing non-empty out dir, unless overwrite and it is an earlier export (has config.json)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        looks_hf = (out / HF_CONFIG_FILE).exists()
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
    tdtype = parse_dtype(dtype)
    check_out_dir(out, overwrite)
    state = strip_prefixes(model_state)
    expected = expected_shapes(cfg)
    problems = [f"missing {k}" for k in sorted(set(expected) - set(state))]
    problems += [f"unexpected {k}" for k in sorted(set(state) - set(expected))]
    problems += [
        f"{k}: state {list(state[k].shape)} vs config {list(expected[k])}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != expected[k]
    ]
    if problems:
        raise CheckpointError(f"model state does not fit the model config: {shown(problems)}")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tok_dir is not None and not (tok_dir / "tokenizer.json").exists():
        raise DataError(f"{tok_dir / 'tokenizer.json'}: missing; cannot export the tokenizer")

    # Plan shards by size (in the export dtype), in a stable HF order.
    names = sorted(expected, key=export_order)
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
            os.chmod(tmp / fname, default_file_mode())  # safetensors creates 0600; exports are meant to be shared
            del tensors
        if len(shards) > 1:
            _write_json(tmp / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
        _write_json(tmp / HF_CONFIG_FILE, hf_config_dict(cfg, tdtype, bos_id, eos_id))
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


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
