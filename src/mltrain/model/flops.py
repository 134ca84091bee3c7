"""Parameters and training FLOPs of a model shape, from the formula alone (no model built).

FLOPs per token (forward + backward), the PaLM / torchtitan convention:
    6 * N  +  12 * L * H * Q * T
N: parameters that take part in matmuls: every parameter except the embedding lookup, plus the
output head (so a tied head counts once, as a matmul). L layers, H heads, Q head dim, T sequence
length; the second term is the attention score and value matmuls (not in N).
Used by the trainer (MFU), the planner (fleet sizing) and the benchmarks.
"""

from __future__ import annotations

from mltrain.config import ModelConfig


def param_count(cfg: ModelConfig, include_embedding: bool = True) -> int:
    """Analytic parameter count (no model needed: planning, MFU, checks against a built model).

    include_embedding=False drops the token-embedding table only; an untied output head stays
    (it is a real matmul per token). With tied embeddings the shared matrix is dropped once.
    """
    d, kv = cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim
    attn = 2 * d * d + 2 * d * kv + ((d + 2 * kv) if cfg.qkv_bias else 0)
    per_layer = attn + 3 * d * cfg.ffn_hidden_size + 2 * d  # attention, SwiGLU, two norms
    n = cfg.n_layers * per_layer + d  # + final norm
    if include_embedding:
        n += cfg.vocab_size * d
    if not cfg.tie_embeddings:
        n += cfg.vocab_size * d
    return n


def matmul_params(cfg: ModelConfig) -> int:
    """N of the FLOPs formula: all parameters but the embedding lookup, plus the output head."""
    tied_head = cfg.vocab_size * cfg.hidden_size if cfg.tie_embeddings else 0
    return param_count(cfg, include_embedding=False) + tied_head


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs for one token: 6N + 12*L*H*Q*T (see module docstring)."""
    return 6.0 * matmul_params(cfg) + 12.0 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
