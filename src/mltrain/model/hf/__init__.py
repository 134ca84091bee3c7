"""Hugging Face interoperability: Llama / Qwen2 checkpoints in, mltrain models out in HF format.

names.py: file and tensor names (ours <-> HF); load.py: weights import, plain or FSDP2-sharded, and
the checks that a run's model fits a checkpoint; export.py: a state dict as an HF model directory.
config.json is read into a ModelConfig by mltrain.config (`model.init_from`); a run's checkpoint is
exported by mltrain.infer.export.
"""

from mltrain.config import HF_SUPPORTED as SUPPORTED
from mltrain.config import hf_config_to_model_config, load_hf_config
from mltrain.model.hf.export import export_state_dict, hf_config_dict
from mltrain.model.hf.load import (
    build_model_from_hf,
    check_hf_matches,
    check_init_from,
    check_matches_hf,
    hf_state_dict_iter,
    load_hf_weights,
)
from mltrain.model.hf.names import INDEX_FILE, hf_to_ours, ours_to_hf

__all__ = [
    "INDEX_FILE",
    "SUPPORTED",
    "build_model_from_hf",
    "check_hf_matches",
    "check_init_from",
    "check_matches_hf",
    "export_state_dict",
    "hf_config_dict",
    "hf_config_to_model_config",
    "hf_state_dict_iter",
    "hf_to_ours",
    "load_hf_config",
    "load_hf_weights",
    "ours_to_hf",
]
