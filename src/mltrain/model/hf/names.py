"""Names in a Hugging Face checkpoint directory: its files, and its tensors under mltrain's names.

Our module names already use HF's RoPE layout (rotate_half), so the weights map 1:1 by name, no
permutation. Used by both directions: load.py and export.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from mltrain.config import ModelConfig
from mltrain.errors import CheckpointError
from mltrain.model.transformer import Transformer

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

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
HF_IGNORED_RE = re.compile(r"(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")


def hf_to_ours(name: str) -> str | None:
    """mltrain name for an HF tensor name, or None when it is not one of ours."""
    if name in _TOP_MAP:
        return _TOP_MAP[name]
    m = _HF_LAYER_RE.match(name)
    if m and m.group(2) in _LAYER_MAP:
        return f"layers.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    return None


def ours_to_hf(name: str) -> str:
    """The Hugging Face name of an mltrain tensor name (CheckpointError when it has none)."""
    if name in _TOP_MAP_INV:
        return _TOP_MAP_INV[name]
    m = _OUR_LAYER_RE.match(name)
    if m and m.group(2) in _LAYER_MAP_INV:
        return f"model.layers.{m.group(1)}.{_LAYER_MAP_INV[m.group(2)]}"
    raise CheckpointError(f"parameter {name!r} has no Hugging Face name (is this an mltrain Transformer state?)")


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept states from torch.compile'd, DDP- or checkpoint-wrapped modules too."""
    out = {}
    for k, v in state.items():
        for p in ("_orig_mod.", "module.", "_checkpoint_wrapped_module."):
            k = k.replace(p, "")
        out[k] = v
    return out


def export_order(name: str) -> tuple[int, int, str]:
    """Sort key of our names in the order HF files list them: embedding, layers by index, the rest."""
    if name == "tok_embeddings.weight":
        return (0, 0, name)
    m = _OUR_LAYER_RE.match(name)
    if m:
        return (1, int(m.group(1)), name)
    return (2, 0, name)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our tensor names and shapes for a model config (a Transformer built on the meta device)."""
    with torch.device("meta"):
        m = Transformer(cfg)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def shown(items: list[str], n: int = 10) -> str:
    """The first `n` items in one line, and how many more there are."""
    return "; ".join(items[:n]) + (f"; ... {len(items) - n} more" if len(items) > n else "")
