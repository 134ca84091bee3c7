"""Decoder-only transformer (Llama/Qwen2 family) and Hugging Face import/export (`mltrain.model.hf`)."""

from mltrain.model.transformer import Transformer
from mltrain.train.metrics import flops_per_token, param_count

__all__ = ["Transformer", "flops_per_token", "param_count"]
