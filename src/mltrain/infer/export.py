"""`mltrain export RUN --hf DIR`: a run's checkpoint (newest valid, or --step) as a Hugging Face model dir.

The weights come from the run's checkpoint, the tokenizer from its data dir (checked against the data
manifest) or from `model.init_from`; the writing is mltrain.model.hf.export's (atomic, sharded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mltrain.config import HF_CONFIG_FILE, ModelConfig, load_run_config, read_hf_config
from mltrain.errors import DataError
from mltrain.model.hf.export import check_out_dir, export_state_dict, parse_dtype
from mltrain.model.transformer import Transformer


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

    from mltrain.train.run_weights import load_run_weights

    run_dir = Path(run_dir)
    tdtype = parse_dtype(dtype)
    check_out_dir(Path(out_dir), overwrite)
    cfg = load_run_config(run_dir / "config.yaml")
    console = Console(stderr=True, soft_wrap=True)  # one line per message, never wrapped
    model_cfg = cfg.model
    if model_cfg.init_from and (Path(model_cfg.init_from) / HF_CONFIG_FILE).exists():
        # training on shorter sequences must not shrink the context the exported model advertises
        hf_max = read_hf_config(Path(model_cfg.init_from)).get("max_position_embeddings") or 0
        model_cfg = model_cfg.model_copy(update={"max_seq_len": max(model_cfg.max_seq_len, int(hf_max))})
    tok_dir, bos_id, eos_id = _run_tokenizer(cfg.data.dir, cfg.model)
    if tok_dir is None:
        from rich.console import Console

        Console(stderr=True).print(
            f"[yellow]warning:[/] no tokenizer.json in {cfg.data.dir} (data.dir) or "
            "model.init_from; exporting the weights without tokenizer files"
        )
    model = Transformer(cfg.model)
    picked, ckpt = load_run_weights(
        cfg, run_dir, model, step, lambda m: console.print(f"[yellow]warning:[/] {escape(m)}", highlight=False)
    )
    why = "as requested" if step is not None else "the newest valid checkpoint"
    console.print(escape(f"exporting step {picked} ({why}) from {ckpt}"), highlight=False)
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
        hf = read_hf_config(Path(model_cfg.init_from))
        return Path(model_cfg.init_from), hf.get("bos_token_id"), _first(hf.get("eos_token_id"))
    return None, None, None


def _hf_bos(model_cfg: ModelConfig) -> int | None:
    if model_cfg.init_from and (Path(model_cfg.init_from) / HF_CONFIG_FILE).exists():
        return read_hf_config(Path(model_cfg.init_from)).get("bos_token_id")
    return None


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, list) and x else x
