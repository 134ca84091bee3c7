"""Pydantic models for the run config, and the YAML loader with `--set a.b=c` overrides.

Every model forbids unknown keys, so a typo is an error naming the key and the file instead
of a silent default. Units live in names (`_s`, `_gib`). Cluster and fleet specs reuse
`StrictModel` and `load_yaml_model` from here. `model.init_from` alone is a whole model: its shape
is read from the Hugging Face directory's config.json when the run config is loaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mltrain.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScriptConfig(StrictModel):
    """The user's own torchrun script, run instead of the built-in trainer (launch/script.py).

    `path` and the script's working directory are relative to the run config file's directory.
    """

    path: str = Field(min_length=1, description="the training script, e.g. train.py")
    args: list[str] = Field(default_factory=list, description="passed to the script verbatim")
    resume_arg: str | None = Field(
        default=None,
        description="e.g. --resume_from_checkpoint: appended with the newest complete checkpoint on a restart",
    )
    checkpoint_dir: str = Field(default="checkpoints", description="where the script saves, relative to the run dir")


# --------------------------------------------------------------------------- model


class RopeScaling(StrictModel):
    """Llama 3 style RoPE frequency scaling (as in the published Llama 3.1/3.2 configs)."""

    rope_type: Literal["llama3"] = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


# what the Llama 3.1 sizes share (Meta's published config.json): vocabulary, context, RoPE, norms
_LLAMA31: dict[str, Any] = dict(
    vocab_size=128256,
    max_seq_len=131072,
    rope_theta=500000.0,
    norm_eps=1e-5,
    qkv_bias=False,
    tie_embeddings=False,
    rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192),
)

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # A few M parameters: learns visibly on 2 CPU cores in a couple of minutes.
    "tiny": dict(
        vocab_size=4096,
        hidden_size=192,
        n_layers=4,
        n_heads=6,
        n_kv_heads=2,
        ffn_hidden_size=512,
        max_seq_len=1024,
        rope_theta=10000.0,
        norm_eps=1e-5,
        qkv_bias=False,
        tie_embeddings=True,
    ),
    "qwen2.5-0.5b": dict(
        vocab_size=151936,
        hidden_size=896,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        ffn_hidden_size=4864,
        max_seq_len=32768,
        rope_theta=1e6,
        norm_eps=1e-6,
        qkv_bias=True,
        tie_embeddings=True,
    ),
    "llama3.2-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        ffn_hidden_size=8192,
        max_seq_len=131072,
        rope_theta=500000.0,
        norm_eps=1e-5,
        qkv_bias=False,
        tie_embeddings=True,
        rope_scaling=dict(
            factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
        ),
    ),
    "llama3.1-8b": dict(
        **_LLAMA31,
        hidden_size=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_hidden_size=14336,
    ),
    # Meta's published config.json shapes; at this size only the planner's layouts (TP/PP/FSDP) fit them.
    "llama3.1-70b": dict(
        **_LLAMA31,
        hidden_size=8192,
        n_layers=80,
        n_heads=64,
        n_kv_heads=8,
        ffn_hidden_size=28672,
    ),
    "llama3.1-405b": dict(
        **_LLAMA31,
        hidden_size=16384,
        n_layers=126,
        n_heads=128,
        n_kv_heads=8,
        ffn_hidden_size=53248,
    ),
}


class ModelConfig(StrictModel):
    """Decoder-only transformer shape. `preset` fills every field not given explicitly."""

    preset: str | None = None
    init_from: str | None = Field(
        default=None, description="local Hugging Face directory to start from (config.json + safetensors)"
    )
    vocab_size: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int = Field(gt=0)
    ffn_hidden_size: int = Field(gt=0)
    max_seq_len: int = Field(default=2048, gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    norm_eps: float = Field(default=1e-5, gt=0)
    qkv_bias: bool = False
    tie_embeddings: bool = False
    init_std: float = Field(default=0.02, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") is not None:
            name = data["preset"]
            if name not in MODEL_PRESETS:
                raise ValueError(f"unknown preset {name!r}; known: {', '.join(MODEL_PRESETS)}")
            return {**MODEL_PRESETS[name], **data}
        return data

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.hidden_size % self.n_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if (self.hidden_size // self.n_heads) % 2:
            raise ValueError("head dimension (hidden_size / n_heads) must be even for RoPE")
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads


# --------------------------------------------------------------------------- model.init_from
# A Hugging Face model directory read as a ModelConfig: a `model:` that names only `init_from` takes its
# shape from there when the run config is loaded (load_run_config). Writing config.json on export, and
# checking that a run's model fits a checkpoint's weights, live with the weights (mltrain.model.hf).

HF_CONFIG_FILE = "config.json"
HF_SUPPORTED = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}  # model_type -> architecture


def read_hf_config(path: Path) -> dict[str, Any]:
    """The config.json of a local Hugging Face model directory, as a dict (ConfigError naming the file)."""
    path = Path(path)
    cfg_path = path / HF_CONFIG_FILE
    if not path.is_dir():
        raise ConfigError(f"{path}: Hugging Face model directory does not exist")
    try:
        data = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: missing; a Hugging Face model dir needs config.json + *.safetensors") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{cfg_path}: unreadable: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{cfg_path}: top level must be a JSON object")
    return data


def hf_config_to_model_config(data: Mapping[str, Any], source: str = HF_CONFIG_FILE) -> ModelConfig:
    """Map an HF config dict (LlamaForCausalLM / Qwen2ForCausalLM) to a ModelConfig."""
    model_type = data.get("model_type")
    archs = data.get("architectures") or []
    supported = ", ".join(f"{a} (model_type {t})" for t, a in HF_SUPPORTED.items())
    if model_type not in HF_SUPPORTED:
        raise ConfigError(
            f"{source}: model_type {model_type!r} ({', '.join(archs) or 'no architectures'}) "
            f"is not supported; supported: {supported}"
        )
    bad_archs = [a for a in archs if a not in HF_SUPPORTED.values()]
    if bad_archs:
        raise ConfigError(f"{source}: architectures {bad_archs} not supported; supported: {supported}")

    def need(key: str) -> Any:
        if data.get(key) is None:
            raise ConfigError(f"{source}: {key}: required key is missing")
        return data[key]

    hidden, n_heads = int(need("hidden_size")), int(need("num_attention_heads"))
    problems = []
    head_dim = data.get("head_dim")
    if head_dim is not None and head_dim != hidden // n_heads:
        problems.append(f"head_dim {head_dim} != hidden_size/num_attention_heads ({hidden // n_heads})")
    if data.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {data['hidden_act']!r} (only 'silu')")
    if data.get("mlp_bias"):
        problems.append("mlp_bias true")
    if model_type == "llama" and data.get("attention_bias"):
        problems.append("attention_bias true (Llama puts a bias on o_proj too)")
    if data.get("use_sliding_window"):
        problems.append("use_sliding_window true")
    if data.get("pretraining_tp", 1) not in (1, None):
        problems.append(f"pretraining_tp {data['pretraining_tp']}")

    # RoPE: transformers >= 5 writes `rope_parameters`; older configs `rope_theta` + `rope_scaling`.
    rope = dict(data.get("rope_parameters") or {})
    theta = rope.get("rope_theta", data.get("rope_theta", 10000.0))
    scaling_src = data.get("rope_scaling") or rope
    rope_type = scaling_src.get("rope_type", scaling_src.get("type", "default")) if scaling_src else "default"
    rope_scaling = None
    if rope_type == "llama3":
        try:
            rope_scaling = RopeScaling(
                **{
                    k: scaling_src[k]
                    for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                }
            )
        except KeyError as e:
            raise ConfigError(f"{source}: rope_scaling: llama3 needs {e.args[0]}") from None
    elif rope_type not in ("default", None):
        problems.append(f"rope_scaling type {rope_type!r} (only llama3)")
    if problems:
        raise ConfigError(f"{source}: unsupported {model_type} features: {'; '.join(problems)}")

    bias = model_type == "qwen2"
    try:
        return ModelConfig(
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            n_layers=need("num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=data.get("num_key_value_heads") or n_heads,
            ffn_hidden_size=need("intermediate_size"),
            max_seq_len=data.get("max_position_embeddings") or 2048,
            rope_theta=float(theta),
            rope_scaling=rope_scaling,
            norm_eps=float(data.get("rms_norm_eps", 1e-6)),
            qkv_bias=bias,
            tie_embeddings=bool(data.get("tie_word_embeddings", False)),
            init_std=float(data.get("initializer_range", 0.02)),
        )
    except ValueError as e:  # pydantic ValidationError is a ValueError
        raise ConfigError(f"{source}: does not map to an mltrain model: {e}".replace("\n", " ")) from None


def load_hf_config(path: str | Path) -> ModelConfig:
    """ModelConfig of a local HF model directory (config.json of a Llama or Qwen2 causal LM)."""
    path = Path(path)
    cfg = hf_config_to_model_config(read_hf_config(path), str(path / HF_CONFIG_FILE))
    return cfg.model_copy(update={"init_from": str(path)})


# --------------------------------------------------------------------------- data


class QualityFilterConfig(StrictModel):
    """Gopher/C4-style heuristics; every threshold is a key, and null switches that rule off."""

    min_words: int | None = Field(default=50, ge=0, description="fewer words than this: removed (Gopher: 50)")
    max_words: int | None = Field(default=100_000, gt=0, description="Gopher: 100,000")
    min_mean_word_length: float | None = Field(default=3.0, ge=0, description="Gopher: 3 characters")
    max_mean_word_length: float | None = Field(default=10.0, gt=0, description="Gopher: 10 characters")
    max_symbol_word_ratio: float | None = Field(
        default=0.1, ge=0, description="('#' and '...'/'\u2026') per word; Gopher: 0.1"
    )
    min_punctuation_line_fraction: float | None = Field(
        default=0.1, ge=0, le=1, description="lines ending in . ! ? \" ' (C4's rule as a document fraction)"
    )
    max_duplicate_line_fraction: float | None = Field(
        default=0.3, ge=0, le=1, description="lines that repeat an earlier line; Gopher: 0.3"
    )
    max_duplicate_paragraph_fraction: float | None = Field(
        default=0.3, ge=0, le=1, description="paragraphs (blank-line separated) that repeat; Gopher: 0.3"
    )
    max_bullet_line_fraction: float | None = Field(
        default=0.9, ge=0, le=1, description="lines starting with a bullet (- * \u2022 ...); Gopher: 0.9"
    )


class NearDedupConfig(StrictModel):
    """MinHash over word n-grams with LSH banding: bands x rows hash functions; candidates sharing a band
    are kept as duplicates when their signatures agree on at least `threshold` of the values."""

    enabled: bool = True
    ngram: int = Field(default=5, gt=0, description="words per shingle")
    bands: int = Field(default=14, gt=0)
    rows: int = Field(default=8, gt=0, description="hash values per band")
    threshold: float = Field(default=0.8, gt=0, le=1, description="estimated Jaccard similarity to call a duplicate")
    seed: int = 42


class LanguageFilterConfig(StrictModel):
    """Keep documents whose detected language is listed (langid.py, which ships its model)."""

    keep: list[str] = Field(min_length=1, description="ISO 639-1 codes, e.g. [en]")
    min_score: float = Field(default=0.0, ge=0, le=1, description="langid's normalised probability")


class CurateConfig(StrictModel):
    """`mltrain data curate`: raw text -> normalised, deduplicated, filtered parquet on Spark."""

    sources: list[str] = Field(
        min_length=1, description="local files/dirs/globs or s3:// prefixes of .txt/.jsonl/.parquet"
    )
    text_field: str = "text"
    output: str = Field(description="local dir or s3://bucket/prefix for the kept documents (parquet)")
    work_dir: str = Field(
        default="curate-work",
        description="step outputs and markers (resume); a path every executor and the driver see (shared FS, hdfs://)",
    )
    normalize: bool = Field(default=True, description="unicode NFC, spaces collapsed, trailing whitespace dropped")
    exact_dedup: bool = True
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    quality: QualityFilterConfig | None = Field(default_factory=QualityFilterConfig, description="null: no filters")
    language: LanguageFilterConfig | None = None
    custom_filter: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'module:function'; function(text) -> True/None keeps, False or a reason string removes",
    )
    output_files: int | None = Field(default=None, gt=0, description="parquet files written; default ~256 MB each")
    examples_per_rule: int = Field(default=3, ge=0)
    master: str = Field(default="local[*]", description="Spark master; --master overrides")
    spark_conf: dict[str, str] = Field(default_factory=dict, description="extra Spark settings; --spark-conf k=v")


class DataConfig(StrictModel):
    """Where the raw corpus is, how to tokenize it, and where the packed shards go."""

    sources: list[str] = Field(
        default_factory=lambda: ["builtin:python-stdlib"],
        description="files, dirs or globs of .txt/.jsonl/.parquet; s3://bucket/prefix/*.jsonl (streamed); "
        "'builtin:python-stdlib'; 'hf:NAME'",
    )
    text_field: str = "text"
    tokenizer: str | None = Field(
        default=None,
        description="tokenizer.json path or HF hub name; 'char' (one token per character of the corpus), "
        "'bytes' (256 byte tokens); none = train a byte-level BPE",
    )
    bpe_vocab_size: int | None = Field(default=None, gt=256, description="default: the model's vocab_size")
    dir: str = "data/demo"
    val_fraction: float = Field(default=0.02, ge=0.0, lt=1.0)
    val_sources: list[str] | None = Field(
        default=None,
        description="validation files (same syntax as sources); when set, val_fraction is not used",
    )
    shard_tokens: int = Field(default=1 << 24, gt=0)
    max_source_bytes: int | None = Field(default=None, gt=0, description="cap on raw bytes read")
    num_workers: int | None = Field(default=None, gt=0, description="tokenizer processes; default all cores")
    curate: CurateConfig | None = Field(default=None, description="`mltrain data curate`: dedup and filters on Spark")


# --------------------------------------------------------------------------- train


class TrainConfig(StrictModel):
    """The optimisation loop: parallelism, batch, schedule, logging and fault handling."""

    parallel: Literal["none", "ddp", "fsdp"] = "none"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    activation_checkpointing: bool | Literal["full", "selective"] = Field(
        default=False,
        description="true/full: recompute each block in backward; selective: keep every other matmul's output "
        "and attention's, recompute the rest (less memory than none, less compute than full)",
    )
    loss_chunk_tokens: int = Field(default=0, ge=0, description="0 = full logits; >0 = chunked cross-entropy")
    seq_len: int = Field(default=256, gt=0)
    micro_batch_size: int = Field(default=8, gt=0)
    grad_accum_steps: int = Field(default=1, gt=0)
    max_steps: int = Field(default=300, gt=0)
    lr: float = Field(default=3e-3, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=20, ge=0)
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.95, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, ge=0, description="0 disables clipping")
    eval_every: int = Field(default=100, ge=0, description="0 disables periodic eval")
    eval_batches: int = Field(default=10, gt=0)
    log_every: int = Field(default=10, gt=0)
    hang_timeout_s: float | None = Field(default=None, gt=0, description="watchdog; none disables")
    stop_check_every: int = Field(default=1, gt=0, description="steps between preemption-flag checks")
    tensorboard: bool = True

    @model_validator(mode="after")
    def _warmup_within_run(self) -> TrainConfig:
        """A warmup longer than the run never reaches the peak lr: a typo when set, so refused.
        The default warmup (20) is shortened to a short run's max_steps instead, so
        `--set train.max_steps=5` keeps working."""
        if self.warmup_steps > self.max_steps and "warmup_steps" not in self.model_fields_set:
            self.warmup_steps = self.max_steps
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps {self.warmup_steps} > max_steps {self.max_steps}: the lr would never reach "
                "train.lr; lower warmup_steps or raise max_steps"
            )
        return self


# Pipeline stages each pp rank runs per schedule: the interleaved schedule loops over 2 "virtual" stages per
# rank (rank r holds stages r and r + pp), the others run one.
STAGES_PER_RANK = {"1F1B": 1, "GPipe": 1, "Interleaved1F1B": 2}


class ParallelConfig(StrictModel):
    """The layout of a run on one DeviceMesh (torchtitan's axes, outermost first: pp, dp_replicate,
    dp_shard, cp, tp). The product of the degrees is the world size; `dp_shard: -1` takes what the
    others leave. Data parallel is dp_replicate x dp_shard (DDP when only dp_replicate > 1, FSDP2 on
    dp_shard, HSDP on both); tp is tensor + sequence parallel inside each block."""

    dp_replicate: int = Field(default=1, ge=1, description="replicas (DDP, or HSDP's replicate dim)")
    dp_shard: int = Field(default=-1, ge=-1, description="FSDP2 shards; -1 = the world size / the other degrees")
    tp: int = Field(default=1, ge=1, description="tensor + sequence parallel degree (within a node)")
    cp: int = Field(default=1, ge=1, description="context parallel degree (sequence split across ranks)")
    pp: int = Field(default=1, ge=1, description="pipeline stages")
    pp_schedule: Literal["1F1B", "Interleaved1F1B", "GPipe"] = "1F1B"
    pp_microbatches: int | None = Field(
        default=None, gt=0, description="pipeline micro batches per local batch; none = the number of stages"
    )
    loss_parallel: bool = Field(default=False, description="tp > 1: cross-entropy on vocab-sharded logits")

    @model_validator(mode="after")
    def _check_degrees(self) -> ParallelConfig:
        if self.dp_shard == 0:
            raise ValueError("dp_shard 0: give a degree >= 1, or -1 to infer it from the world size")
        return self

    def n_stages(self) -> int:
        """Pipeline stages in all: pp ranks x the schedule's stages per rank (1 without pp)."""
        return self.pp * STAGES_PER_RANK[self.pp_schedule] if self.pp > 1 else 1

    def microbatches(self) -> int:
        """Pipeline micro batches each local batch is split into (pp_microbatches, default one per stage)."""
        return self.pp_microbatches or self.n_stages()

    def fixed_product(self) -> int:
        """The product of every degree but an inferred dp_shard."""
        return self.dp_replicate * max(self.dp_shard, 1) * self.tp * self.cp * self.pp


class CheckpointConfig(StrictModel):
    """Distributed checkpoints: cadence, retention, async save."""

    every_steps: int = Field(default=100, ge=0, description="0 = only at the end and on preemption")
    keep_last: int = Field(default=3, gt=0)
    async_save: bool = False
    resume: bool = True
    mirror: str | None = Field(
        default=None,
        pattern=r"^s3://[^/]+",
        description="s3://bucket/prefix: upload every committed checkpoint there in the background; "
        "a run with no local checkpoint resumes from the newest complete one",
    )
    storage: str | None = Field(
        default=None,
        pattern=r"^s3://[^/]+",
        description="s3://bucket/prefix: write checkpoints straight there (DCP through s3torchconnector) instead "
        "of <run>/checkpoints; same COMMITTED marker, hashes and resume rules",
    )

    @model_validator(mode="after")
    def _one_destination(self) -> CheckpointConfig:
        if self.storage and self.mirror:
            raise ValueError(
                "checkpoint.storage and checkpoint.mirror both set: with storage on S3 the checkpoints are "
                "already there; drop mirror"
            )
        return self


class LaunchConfig(StrictModel):
    """Recovery policy used by the Slurm and Kubernetes launchers."""

    max_restarts: int = Field(default=3, ge=0, description="failures (rank, node, hang) recovered before giving up")
    requeue_grace_s: int = Field(
        default=120, gt=0, description="USR1 this long before the time limit; must be shorter than the limit"
    )
    max_in_place_restarts: int = Field(
        default=2,
        ge=0,
        description="after a rank failure on healthy nodes, restart torchrun in the same allocation this many "
        "times (each counted against max_restarts) before requeueing",
    )
    max_preemptions: int = Field(
        default=3,
        ge=1,
        description="give up after this many preemption/time-limit requeues in a row without a new checkpoint",
    )
    min_nodes: int | None = Field(
        default=None,
        ge=1,
        description="when a failed node is excluded and no spare exists, continue on fewer nodes down to this "
        "(the trainer resumes on the new world size); none = never shrink",
    )
    health_check: bool = Field(
        default=False,
        description="Slurm: run `mltrain health` on every node of each allocation before training; failing "
        "nodes are excluded and the job requeued without them (a bad GPU costs one requeue, not a crashed run)",
    )
    health_burn_in_s: float = Field(
        default=10.0, ge=0, description="seconds of matmul burn-in per GPU in that check; 0 = NVML checks only"
    )


class PrometheusLogConfig(StrictModel):
    """Each node's rank 0 serves /metrics (needs the `prometheus` extra); see docs/operate.md."""

    enabled: bool = False
    port: int = Field(default=9410, ge=0, le=65535, description="0 = any free port (the targets file says which)")
    addr: str = Field(default="0.0.0.0", description="listen address")
    gpu_metrics: bool = Field(default=True, description="per-GPU DCGM_FI_DEV_* gauges through NVML, when present")
    linger_s: float = Field(default=0.0, ge=0, description="keep serving this long after training, for a last scrape")


class MlflowLogConfig(StrictModel):
    """MLflow tracking (the `mlflow` extra): params = the resolved config, metrics = the trainer's records."""

    uri: str | None = Field(default=None, description="tracking URI, e.g. http://mlflow:5000; none disables")
    experiment: str = "mltrain"
    log_model: bool = Field(default=False, description="at the end, export the model (HF format) as an artifact")


class WandbLogConfig(StrictModel):
    """Weights & Biases (the `wandb` extra); offline mode writes run files under <run>/wandb."""

    enabled: bool = False
    project: str = "mltrain"
    mode: Literal["offline", "online"] = "offline"
    entity: str | None = None


class StragglerConfig(StrictModel):
    """Every `every_steps` steps, ranks' compute times are gathered; a rank slower than the median by more
    than `threshold` (a fraction) is logged as a `straggler` record in metrics.jsonl."""

    every_steps: int = Field(default=50, ge=0, description="0 disables")
    threshold: float = Field(default=0.2, gt=0)


class LogConfig(StrictModel):
    """Where metrics go besides metrics.jsonl and TensorBoard, and straggler detection."""

    prometheus: PrometheusLogConfig = Field(default_factory=PrometheusLogConfig)
    mlflow: MlflowLogConfig = Field(default_factory=MlflowLogConfig)
    wandb: WandbLogConfig = Field(default_factory=WandbLogConfig)
    stragglers: StragglerConfig = Field(default_factory=StragglerConfig)


class RunConfig(StrictModel):
    """One training run: everything `mltrain train` needs."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    base_dir: str = "."
    seed: int = 1234
    model: ModelConfig | None = None  # required unless `script` is set
    script: ScriptConfig | None = None  # set: run this script instead of the built-in trainer (launch/script.py)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    parallel: ParallelConfig | None = Field(
        default=None, description="the layout on a device mesh; none = train.parallel's shorthand"
    )

    @model_validator(mode="after")
    def _tokenizer_from_init_dir(self) -> RunConfig:
        """Starting from a published checkpoint means using its tokenizer, unless told otherwise."""
        if self.model is not None and self.model.init_from and self.data.tokenizer is None:
            candidate = Path(self.model.init_from) / "tokenizer.json"
            if candidate.is_file():
                self.data.tokenizer = str(candidate)
        return self

    @model_validator(mode="after")
    def _check_lengths(self) -> RunConfig:
        if self.model is not None and self.train.seq_len > self.model.max_seq_len:
            raise ValueError(f"train.seq_len {self.train.seq_len} exceeds model.max_seq_len {self.model.max_seq_len}")
        return self

    @model_validator(mode="after")
    def _check_parallel(self) -> RunConfig:
        """What a layout needs of the model and batch, knowable without the world size."""
        p = self.parallel
        if p is None or self.model is None:
            return self
        m, t = self.model, self.train
        if p.tp > 1:
            for key in ("n_heads", "n_kv_heads"):
                if getattr(m, key) % p.tp:
                    raise ValueError(f"parallel.tp {p.tp}: model.{key} {getattr(m, key)} is not divisible by it")
            if t.loss_chunk_tokens:
                raise ValueError(f"parallel.tp {p.tp}: train.loss_chunk_tokens must be 0 under tensor parallel")
        if t.seq_len % (2 * p.tp * p.cp):
            raise ValueError(
                f"train.seq_len {t.seq_len} is not divisible by 2 x parallel.tp {p.tp} x parallel.cp {p.cp} "
                f"= {2 * p.tp * p.cp} (sequence parallel splits it across ranks)"
            )
        if p.loss_parallel and p.tp == 1:
            raise ValueError("parallel.loss_parallel needs parallel.tp > 1 (it shards the logits over tp)")
        if p.dp_shard == 1 and (ddp := _ddp_refusal(p, ("tp",))):  # given; inferred ones: resolve_parallel
            raise ValueError(ddp)
        if p.pp > 1:
            _check_pipeline(p, m, t)
        return self

    @model_validator(mode="after")
    def _model_or_script(self) -> RunConfig:
        """The built-in trainer needs a model; a script run brings its own (and then model: is a mistake)."""
        if self.script is None and self.model is None:
            raise ValueError("model: required key is missing (or name your own training script under script:)")
        if self.script is not None and self.model is not None:
            raise ValueError(
                "script: and model: are both set: a script run builds its own model; drop model: "
                "(or drop script: to use the built-in trainer)"
            )
        return self

    @property
    def run_dir(self) -> Path:
        from mltrain.rundir import run_path

        return run_path(self.base_dir, self.name)


def _check_pipeline(p: ParallelConfig, m: ModelConfig, t: TrainConfig) -> None:
    """What pipeline parallel needs of the model and the batch (ValueError, one line each)."""
    n, mb = p.n_stages(), p.microbatches()
    if m.tie_embeddings:
        raise ValueError(
            f"parallel.pp {p.pp}: model.tie_embeddings must be false under pipeline parallel (the embedding is on "
            "the first stage, the head on the last: one tied matrix cannot be on both)"
        )
    if m.n_layers < n:
        raise ValueError(
            f"parallel.pp {p.pp} with {p.pp_schedule} makes {n} pipeline stages, but model.n_layers is {m.n_layers}: "
            "each stage needs at least one layer"
        )
    if t.loss_chunk_tokens:
        raise ValueError(f"parallel.pp {p.pp}: train.loss_chunk_tokens must be 0 under pipeline parallel")
    which = f"parallel.pp_microbatches {mb}" + ("" if p.pp_microbatches else f" (the default: {n} stages)")
    if t.micro_batch_size % mb:
        raise ValueError(
            f"train.micro_batch_size {t.micro_batch_size} is not divisible by {which}: each pipeline micro batch "
            "takes an equal share of the local batch"
        )
    if p.pp_schedule == "1F1B" and mb < p.pp:
        raise ValueError(f"{which}: 1F1B needs at least one micro batch per stage ({p.pp})")
    rounds = max(1, mb // p.pp)
    if p.pp_schedule == "Interleaved1F1B" and mb % rounds:
        raise ValueError(
            f"{which}: Interleaved1F1B runs them in {rounds} equal rounds ({mb} // pp {p.pp}); "
            f"use a multiple of pp or fewer than {2 * p.pp}"
        )


def require_builtin(cfg: RunConfig, what: str, source: str | Path = "") -> None:
    """Commands that only make sense for the built-in trainer refuse a script run with one line."""
    if cfg.script is not None:
        where = f"{source}: " if source else ""
        raise ConfigError(
            f"{where}{what} works on runs of the built-in trainer; this run config runs its own script "
            f"({cfg.script.path}) under script:"
        )


def check_nproc(cfg: RunConfig, nproc: int, path: str | Path | None = None) -> None:
    """Refuse process counts that cannot train correctly on one machine.

    `parallel: none` with several processes would train N unsynchronised copies of the model that
    overwrite each other's checkpoints, never something a user wants.
    """
    source = f"{path}: --nproc" if path else "--nproc"
    if nproc < 1:
        raise ConfigError(f"{source} {nproc}: must be at least 1")
    if cfg.parallel is not None and cfg.script is None:
        try:
            resolve_parallel(cfg, nproc, _device_type(cfg))
        except ConfigError as e:
            raise ConfigError(f"{source} {nproc}: {e}") from None
        return
    if nproc > 1 and cfg.train.parallel == "none" and cfg.script is None:
        raise ConfigError(
            f"{source} {nproc} with train.parallel: none would train {nproc} unsynchronised copies; "
            "use --set train.parallel=ddp (or fsdp), or --nproc 1"
        )


def resolve_parallel(cfg: RunConfig, world_size: int, device_type: str = "cpu") -> ParallelConfig:
    """The layout for `world_size` ranks, every degree known: the `parallel:` block, or the shorthand
    `train.parallel` (ddp = dp_replicate over the world, fsdp = dp_shard over the world, none = one rank).

    ConfigError (one line) when the degrees do not multiply to the world size, or when the layout
    cannot run on this device."""
    p = cfg.parallel
    if p is None:
        mode = cfg.train.parallel
        if mode == "ddp":
            return ParallelConfig(dp_replicate=world_size, dp_shard=1)
        return ParallelConfig(dp_shard=world_size if mode == "fsdp" else 1)
    if p.cp > 1:
        if device_type == "cpu":
            raise ConfigError(
                f"parallel.cp {p.cp}: context parallel cannot run on CPU (torch's context parallel needs the "
                "CUDA flash / efficient / cuDNN attention kernels); use cp: 1"
            )
        if p.pp > 1:
            raise ConfigError(
                f"parallel.cp {p.cp} with pp {p.pp}: context parallel inside pipeline stages is not supported; "
                "use one of them"
            )
    fixed = p.fixed_product()
    if p.dp_shard == -1:
        if world_size % fixed:
            raise ConfigError(
                f"parallel: dp_replicate {p.dp_replicate} x tp {p.tp} x cp {p.cp} x pp {p.pp} = {fixed} does not "
                f"divide the world size {world_size}, so dp_shard: -1 cannot be inferred"
            )
        p = p.model_copy(update={"dp_shard": world_size // fixed})
    elif fixed != world_size:
        raise ConfigError(
            f"parallel: dp_replicate {p.dp_replicate} x dp_shard {p.dp_shard} x tp {p.tp} x cp {p.cp} x pp {p.pp} "
            f"= {fixed}, but the world size is {world_size}"
        )
    if p.dp_shard == 1 and (ddp := _ddp_refusal(p)):
        raise ConfigError(ddp)
    return p


def _ddp_refusal(p: ParallelConfig, axes: tuple[str, ...] = ("tp", "pp")) -> str | None:
    """Why replicas without sharding (DDP) cannot carry this layout, for a dp_shard of 1: DDP does not
    compose with tensor parallel's DTensors, and torch's pipeline stages drive DDP's reducer by hand,
    which fails on its second step (bucket rebuild)."""
    if p.dp_replicate == 1:
        return None
    for axis, what in (("tp", "tensor"), ("pp", "pipeline")):
        if axis in axes and getattr(p, axis) > 1:
            return (
                f"parallel.dp_replicate {p.dp_replicate} with {axis} {getattr(p, axis)} and dp_shard 1: DDP does not "
                f"compose with {what} parallel; use dp_shard instead (HSDP when dp_replicate > 1 too)"
            )
    return None


def layout_warning(cfg: RunConfig, world_size: int) -> str | None:
    """Why the `parallel:` block cannot start on `world_size` GPU ranks (the trainer would refuse it),
    for launchers that render a job before any rank runs; None when it fits or there is no block."""
    if cfg.parallel is None:
        return None
    try:
        resolve_parallel(cfg, world_size, "cuda")
    except ConfigError as e:
        return str(e)
    return None


def _device_type(cfg: RunConfig) -> str:
    """cpu or cuda, as the trainer will pick it (torch is asked only for `device: auto`)."""
    if cfg.train.device != "auto":
        return cfg.train.device
    from mltrain.devices import no_gpu_here

    if no_gpu_here():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parallel_note(cfg: RunConfig) -> str | None:
    """One line when both the `parallel:` block and the shorthand `train.parallel` are given."""
    if cfg.parallel is not None and cfg.train.parallel != "none":
        return (
            f"train.parallel: {cfg.train.parallel} is ignored: the parallel: block sets the layout "
            "(ddp = dp_replicate over the world, fsdp = dp_shard over the world)"
        )
    return None


# --------------------------------------------------------------------------- loading

M = TypeVar("M", bound=BaseModel)


class _ConfigLoader(yaml.SafeLoader):
    """YAML as users mean it: `time: 12:00:00` is the text 12:00:00, not YAML 1.1's base-60 integer 43200
    (which a Slurm time field would read as 43200 minutes)."""


_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_ConfigLoader.yaml_implicit_resolvers = {
    **yaml.SafeLoader.yaml_implicit_resolvers,  # a copy: SafeLoader itself keeps YAML 1.1's reading
    **{
        first: [("tag:yaml.org,2002:str", _SEXAGESIMAL), *yaml.SafeLoader.yaml_implicit_resolvers.get(first, [])]
        for first in "-+0123456789"
    },
}


def load_config_yaml(text: str) -> Any:
    """Parse a config file or a --set value (safe YAML, base-60 numbers read as text)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506  (a SafeLoader subclass)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    try:
        data = load_config_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; the value is parsed as YAML (so 3, 1e-3, true, [1,2] work).
    A numeric part indexes a list: `models.0.nodes=8`."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: --set {item!r}: expected KEY=VALUE, e.g. train.max_steps=100")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = load_config_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{source}: --set {key}: {part!r} is not an index of a {len(node)}-item list")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                raise ConfigError(f"{source}: --set {key}: {parts[i - 1]!r} is not a section")
    return data


def format_validation_error(source: str, err: ValidationError) -> str:
    """One line: `file: key.path: reason; key2: reason2`."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{loc}: {msg}")
    return f"{source}: " + "; ".join(parts)


def validate_model(model_cls: type[M], data: dict[str, Any], source: str) -> M:
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(source, e)) from None


def load_yaml_model(path: str | Path, model_cls: type[M], overrides: list[str] | None = None) -> M:
    """Load a YAML file into `model_cls`, applying overrides; errors name the file and key."""
    path = Path(path)
    data = apply_overrides(_read_yaml(path), overrides or [], str(path))
    return validate_model(model_cls, data, str(path))


def yaml_kind(data: dict[str, Any]) -> str | None:
    """What kind of mltrain file a YAML mapping looks like, from its top-level keys (None: no idea). Used
    only after a file failed to validate, to say "this is a run config" instead of nine unknown keys."""
    keys = set(data)
    if data.get("kind") == "eks":
        return "an EKS spec"
    if "models" in keys and isinstance(data.get("cluster"), dict):
        return "a fleet file"
    if "instance_type" in keys and keys & {"gpus_per_node", "slurm", "aws", "run_base_dir", "container", "venv"}:
        return "a cluster spec"
    if keys & {"model", "script", "train", "data", "checkpoint", "launch", "log", "base_dir"}:
        return "a run config"
    return None


def refuse_other_kind(path: Path, data: dict[str, Any], want: str, takes: str) -> None:
    """ConfigError "PATH is a run config; plan takes a fleet file" when `data` looks like another kind."""
    kind = yaml_kind(data)
    if kind is not None and kind != want:
        raise ConfigError(f"{path} is {kind}; {takes}")


def _shape_from_init_dir(data: dict[str, Any]) -> dict[str, Any]:
    """`model:` with `init_from` and neither a preset nor a shape: the shape of that Hugging Face directory
    (its config.json), every key given in the run config kept."""
    model = data.get("model")
    if (
        isinstance(model, dict)
        and model.get("init_from")
        and model.get("preset") is None
        and "hidden_size" not in model
    ):
        shape = load_hf_config(model["init_from"]).model_dump(exclude={"preset", "init_from"})
        data["model"] = {**shape, **model}
    return data


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A run config; a fleet file or cluster spec given instead is one line saying so."""
    path = Path(path)
    try:
        data = apply_overrides(_read_yaml(path), overrides or [], str(path))
        return validate_model(RunConfig, _shape_from_init_dir(data), str(path))
    except ConfigError:
        refuse_other_kind(path, _read_yaml(path), "a run config", "this command takes a run config")
        raise


def dump_yaml(model: BaseModel) -> str:
    data = model.model_dump(mode="json")
    if isinstance(model, RunConfig) and model.parallel is None:
        data.pop("parallel", None)  # train.parallel's shorthand sets the layout: no parallel: key
    if isinstance(model, RunConfig) and model.script is None:
        data.pop("script", None)  # a built-in trainer run: no script: key in its config.yaml
    elif isinstance(model, RunConfig):  # a script run: the built-in trainer's defaults would mislead (max_steps)
        for key in ("model", "data", "train", "checkpoint"):
            if key not in model.model_fields_set:
                data.pop(key, None)
    return yaml.safe_dump(data, sort_keys=False)
