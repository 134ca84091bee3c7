"""Decoder-only transformer of the Llama / Qwen2 family, in one readable file.

RMSNorm -> grouped-query attention with RoPE -> RMSNorm -> SwiGLU MLP, repeated `n_layers` times,
then a final RMSNorm and the vocabulary head (optionally tied to the token embedding).

The numerics follow Hugging Face's `modeling_llama` / `modeling_qwen2` on purpose, so published
weights load without any permutation and give the same logits:
  - RMSNorm normalises in fp32, casts back, then multiplies by the weight;
  - RoPE uses the "rotate_half" layout (first half / second half of each head, not interleaved pairs),
    inverse frequencies in fp32, optional Llama 3 frequency scaling;
  - q/k/v biases (Qwen2) and no bias anywhere else.

Module names follow torchtitan (`attention.wq`, `feed_forward.w1`, ...); `mltrain.model.hf` maps
them to and from the Hugging Face names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mltrain.config import ModelConfig, RopeScaling

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 (as HF does), so bf16 training and HF inference agree."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.dtype == w.dtype == torch.float32 and x.device.type == "cpu" and _plain(x) and _plain(w):
            return _RMSNormFp32.apply(x, w, self.eps)  # same forward ops, one fused backward
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _plain(t: torch.Tensor) -> bool:
    """A dense tensor or Parameter (not a DTensor or other subclass that needs its own dispatch)."""
    return type(t) in (torch.Tensor, nn.Parameter)


class _RMSNormFp32(torch.autograd.Function):
    """fp32 RMSNorm with a hand-written backward, for CPU where every elementwise pass counts.

    The forward runs exactly the ops of RMSNorm.forward (bit-identical output). Autograd's own
    backward of that graph takes ~12 elementwise passes over [B, T, D] (several with an inner-dim
    broadcast, slow on CPU); the closed form below takes 4 plus two reductions:
        xhat = x * rstd,  gxh = g * xhat,  dw = sum(gxh) over rows,  c = (gxh @ w) / D,
        dx = rstd * (g * w - xhat * c).
    It saves xhat and rstd (the same memory autograd kept). Numerically equal up to fp32 round-off.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return weight * xhat

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:  # type: ignore[override]
        xhat, rstd, weight = ctx.saved_tensors
        dim = g.shape[-1]
        gxh = (g * xhat).reshape(-1, dim)
        dw = gxh.sum(0) if ctx.needs_input_grad[1] else None
        dx = None
        if ctx.needs_input_grad[0]:
            c = torch.mv(gxh, weight).div_(dim).view(rstd.shape)  # mean(g * w * xhat) per row, one pass
            dx = torch.addcmul(g * weight, xhat, c, value=-1).mul_(rstd)
        return dx, dw, None


def rope_inv_freq(cfg: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """Inverse RoPE frequencies [head_dim/2] in fp32, with optional Llama 3 scaling.

    Written to match `transformers.modeling_rope_utils` bit for bit (same op order, fp32).
    """
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    if cfg.rope_scaling is not None:
        inv_freq = _llama3_scale(inv_freq, cfg.rope_scaling)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1 "rope_type: llama3": long wavelengths slowed by `factor`, a smooth ramp in between."""
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Holds the fp32 inverse frequencies (a non-persistent buffer) and makes cos/sin per forward.

    cos/sin are computed from positions each step instead of cached for max_seq_len: for 128k-context
    presets a cache would cost >100 MiB per GPU, while recomputing is a tiny outer product.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("inv_freq", torch.empty(cfg.head_dim // 2, dtype=torch.float32), persistent=False)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.inv_freq.copy_(rope_inv_freq(self.cfg, device=self.inv_freq.device))

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # `model.to(torch.bfloat16)` would otherwise round the frequencies to bf16 and shift every
        # position by up to a few degrees; keep them fp32 (recomputed exactly) whatever the params are.
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:
            self.inv_freq = rope_inv_freq(self.cfg, device=self.inv_freq.device)
        return self

    def forward(self, seq_len: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 cos and sign-folded sin [T, head_dim] for positions offset..offset+T-1 (see apply_rope)."""
        pos = torch.arange(offset, offset + seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.float())  # [T, head_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # rotate_half layout: [T, head_dim]
        sin = freqs.sin()
        return emb.cos(), torch.cat((-sin, sin), dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """x: [B, H, T, D]; cos, sin_signed: [T, D] fp32, cast to x's dtype so bf16 compute stays bf16.

    HF's `x * cos + rotate_half(x) * sin` with the sign of rotate_half folded into sin
    (sin_signed = [-sin, sin]) and the halves swapped by one roll: bit for bit the same values and
    gradients (negation is exact), with fewer ops per call (measurable on CPU for small models).
    """
    cos, sin_signed = cos.to(x.dtype), sin_signed.to(x.dtype)
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


class KVCache:
    """Keys and values of the tokens seen so far, per layer, for incremental decoding (inference only).

    Preallocated [B, n_kv_heads, max_len, head_dim] per layer; keys are stored after RoPE, so a new
    token only needs its own position. `pos` is how many positions are filled.
    """

    def __init__(
        self, cfg: ModelConfig, batch_size: int, max_len: int, device: torch.device | str, dtype: torch.dtype
    ) -> None:
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k/v [B, Hkv, T, D] at the current position; return every key/value so far."""
        end = self.pos + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, {end} needed")
        self.k[layer][:, :, self.pos : end] = k
        self.v[layer][:, :, self.pos : end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    """Grouped-query causal self-attention through F.scaled_dot_product_attention."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads
        self.head_dim = cfg.head_dim
        self.wq = nn.Linear(cfg.hidden_size, cfg.n_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.hidden_size, cfg.n_kv_heads * cfg.head_dim, bias=cfg.qkv_bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.hidden_size, bias=False)
        self.repeat_kv = False  # always repeat KV heads, never SDPA's enable_gqa (context parallel sets it)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: tuple[KVCache, int] | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        # -1 heads: under tensor parallel this rank holds n_heads / tp of them (and n_kv_heads / tp)
        q = self.wq(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask = None
        causal = True
        if cache is not None:
            kv, layer = cache
            past = kv.pos
            k, v = kv.update(layer, k, v)
            if past:  # new queries see every cached position and the causal part of their own block
                causal = False
                if T > 1:
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        gqa = self.n_kv_heads != self.n_heads
        if gqa and (self.repeat_kv or not (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16))):
            # SDPA's enable_gqa only has flash (CUDA half/bf16) and math kernels; elsewhere repeat the
            # KV heads so the memory-efficient / cuDNN / CPU-flash kernels stay eligible.
            n_rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)
            gqa = False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)  # [B,H,T,D]
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x); w1 = HF gate_proj, w3 = up_proj, w2 = down_proj."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size, bias=False)
        self.w3 = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: tuple[KVCache, int] | None = None
    ) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, cache)
        return x + self.feed_forward(self.ffn_norm(x))


# --------------------------------------------------------------------------- the model


class LayerStack(nn.ModuleDict):
    """The blocks keyed by their layer index ("0", "1", ...), indexed and iterated like a ModuleList.

    A pipeline stage keeps only its own blocks, and their state-dict keys (`layers.<i>.`) stay those of
    the whole model, so a checkpoint reshards between any two layouts."""

    def __getitem__(self, i: int | str) -> nn.Module:
        return super().__getitem__(str(i))

    def __setitem__(self, i: int | str, module: nn.Module) -> None:
        super().__setitem__(str(i), module)

    def __delitem__(self, i: int | str) -> None:
        super().__delitem__(str(i))

    def __iter__(self):  # type: ignore[override]
        return iter(self.values())

    def indices(self) -> list[int]:
        """The layer indices this stack holds, in order."""
        return [int(k) for k in self.keys()]


class Transformer(nn.Module):
    """The whole decoder. Construct under `torch.device("meta")`, `to_empty(device=...)`, `init_weights()`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.rope = RotaryEmbedding(cfg)
        self.layers = LayerStack({str(i): TransformerBlock(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        # Ranks the sequence of the hidden states between blocks is split over (tp under sequence parallel):
        # a pipeline stage without the embedding derives the positions for RoPE from its input's length x this.
        self.sequence_shards = 1
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter and buffer; after this nothing holds uninitialised memory.

        normal(0, init_std) for embeddings and linears; the two projections that write into the
        residual stream (attention.wo, feed_forward.w2) are scaled by 1/sqrt(2 * n_layers) (GPT-2),
        so the residual variance does not grow with depth. Norm weights 1, biases 0.
        """
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=std)
        self.rope.reset_parameters()
        for layer in self.layers:
            layer.attention_norm.reset_parameters()
            layer.ffn_norm.reset_parameters()
            for lin in (
                layer.attention.wq,
                layer.attention.wk,
                layer.attention.wv,
                layer.feed_forward.w1,
                layer.feed_forward.w3,
            ):
                nn.init.normal_(lin.weight, mean=0.0, std=std)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
            nn.init.normal_(layer.attention.wo.weight, mean=0.0, std=out_std)
            nn.init.normal_(layer.feed_forward.w2.weight, mean=0.0, std=out_std)
        self.norm.reset_parameters()
        if self.output is not None:
            nn.init.normal_(self.output.weight, mean=0.0, std=std)

    def head_weight(self) -> torch.Tensor:
        """[V, D] matrix of the vocabulary head (the embedding table when tied)."""
        return self.tok_embeddings.weight if self.output is None else self.output.weight

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.tok_embeddings.weight) if self.output is None else self.output(h)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Final-normed hidden states [B, T, D] (before the vocabulary head).

        With a cache, input_ids continue the cached positions and the cache is advanced past them.
        `rope`: the cos/sin tables of exactly these tokens' positions (context parallel hands each rank the
        rows of its sequence chunks, which are not positions 0..T-1).
        A pipeline stage (train.stages.cut_to_stage) without the embedding takes the previous stage's hidden
        states instead of input_ids, and one without the final norm returns its last block's output.
        """
        if self.tok_embeddings is None:
            h = input_ids
            seq_len = h.shape[1] * self.sequence_shards  # positions 0..T-1 even when this rank holds T / tp
        else:
            h = self.tok_embeddings(input_ids)
            seq_len = input_ids.shape[1]
        if cache is None:
            cos, sin = rope if rope is not None else self.rope(seq_len)
            for layer in self.layers:
                h = layer(h, cos, sin)
        else:
            cos, sin = self.rope(seq_len, offset=cache.pos)
            for i, layer in zip(self.layers.indices(), self.layers, strict=True):
                h = layer(h, cos, sin, (cache, i))
            cache.pos += seq_len
        return h if self.norm is None else self.norm(h)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        loss_chunk_tokens: int = 0,
        cache: KVCache | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """targets None -> logits [B, T, V]; else mean cross-entropy (fp32 scalar, ignore_index=-100).

        `cache` (inference): attend to the cached positions too, then append these tokens to it.
        A pipeline stage before the last returns its hidden states (the next stage's input).
        """
        h = self.hidden_states(input_ids, cache, rope)
        if self.norm is None:
            return h
        if targets is None:
            return self._head(h)
        if loss_chunk_tokens > 0:
            return self._chunked_loss(h, targets, loss_chunk_tokens)
        logits = self._head(h)
        return F.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="mean"
        )

    def _chunked_loss(self, h: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        """Cross-entropy over token chunks; each chunk's logits are recomputed in backward
        (non-reentrant activation checkpointing), so at most one chunk of [chunk, V] logits is alive.
        The chunk count depends only on shapes, so torch.compile sees a static loop.
        """
        h = h.flatten(0, 1)
        t = targets.flatten()
        total = h.new_zeros((), dtype=torch.float32)
        for h_c, t_c in zip(h.split(chunk), t.split(chunk), strict=True):
            total = total + checkpoint(self._chunk_ce_sum, h_c, t_c, use_reentrant=False)
        count = (t != IGNORE_INDEX).sum()
        return total / count  # all tokens ignored -> nan, exactly like F.cross_entropy(mean)

    def _chunk_ce_sum(self, h_c: torch.Tensor, t_c: torch.Tensor) -> torch.Tensor:
        logits = self._head(h_c).float()
        return F.cross_entropy(logits, t_c, ignore_index=IGNORE_INDEX, reduction="sum")


# --------------------------------------------------------------------------- counting
