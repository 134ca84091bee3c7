"""Decoder-only transformer (Llama/Qwen2 family) and Hugging Face import/export (`mltrain.model.hf`)."""

from mltrain.model.flops import flops_per_token, param_count
from mltrain.model.transformer import Transformer

__all__ = ["Transformer", "flops_per_token", "param_count"]
