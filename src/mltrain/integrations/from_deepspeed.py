"""`mltrain config from-deepspeed ds_config.json`: the mltrain `train:` settings closest to a DeepSpeed config,
and every option that has no mltrain equivalent, with what to do instead.

Pure dictionary work: DeepSpeed itself is not needed (it stays the user's dependency). "auto" values are
filled by the Hugging Face Trainer from its TrainingArguments; they are reported as such, and the mltrain
key is left at its default for the user to set from those arguments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mltrain.errors import ConfigError

# DeepSpeed "auto" -> the TrainingArguments field the HF Trainer fills it from.
HF_AUTO_SOURCE = {
    "train_micro_batch_size_per_gpu": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_clipping": "max_grad_norm",
    "train_batch_size": "per_device_train_batch_size x gradient_accumulation_steps x world size",
    "bf16.enabled": "bf16",
    "fp16.enabled": "fp16",
    "optimizer.params.lr": "learning_rate",
    "optimizer.params.betas": "adam_beta1, adam_beta2",
    "optimizer.params.eps": "adam_epsilon",
    "optimizer.params.weight_decay": "weight_decay",
    "scheduler.params.warmup_num_steps": "warmup_steps (or warmup_ratio x max_steps)",
    "scheduler.params.warmup_max_lr": "learning_rate",
    "scheduler.params.warmup_min_lr": "0",
    "scheduler.params.total_num_steps": "max_steps",
}

ZERO_LOSS = {
    0: "nothing is lost: ZeRO-0 is plain data parallelism",
    1: "sharding: optimizer state is replicated on every GPU instead of sharded (Adam: ~12 bytes/parameter on each GPU); "
    "if that does not fit, use parallel: fsdp",
    2: "sharding: optimizer state and gradients are replicated on every GPU instead of sharded (~14 bytes/parameter on "
    "each GPU); if that does not fit, use parallel: fsdp (shards parameters too, like ZeRO-3)",
}

OFFLOAD_ADVICE = (
    "mltrain keeps parameters and optimizer state on the GPUs: use parallel: fsdp (shards them over all "
    "GPUs), more nodes, train.activation_checkpointing: true or a smaller micro_batch_size instead"
)
COMM_TUNING = "communication tuning: DDP/FSDP bucket and overlap settings are chosen by mltrain; drop it"
ZERO_PP = "ZeRO++ (quantized / hierarchical communication): no equivalent; FSDP communicates in bf16; drop it"
LOGGING = "mltrain always writes metrics.jsonl and TensorBoard (train.tensorboard, train.log_every); drop it"

ZERO_KEYS: dict[str, str | None] = {
    "stage": None,
    "offload_optimizer": OFFLOAD_ADVICE,
    "offload_param": OFFLOAD_ADVICE,
    "cpu_offload": OFFLOAD_ADVICE,
    "zero_quantized_weights": ZERO_PP,
    "zero_quantized_gradients": ZERO_PP,
    "zero_quantized_nontrainable_weights": ZERO_PP,
    "zero_hpz_partition_size": ZERO_PP,
    "overlap_comm": COMM_TUNING,
    "contiguous_gradients": COMM_TUNING,
    "reduce_bucket_size": COMM_TUNING,
    "allgather_bucket_size": COMM_TUNING,
    "allgather_partitions": COMM_TUNING,
    "reduce_scatter": COMM_TUNING,
    "round_robin_gradients": COMM_TUNING,
    "sub_group_size": COMM_TUNING,
    "stage3_prefetch_bucket_size": "FSDP prefetches one layer ahead by itself; drop it",
    "stage3_param_persistence_threshold": "FSDP shards every layer; drop it",
    "stage3_max_live_parameters": "FSDP frees each layer's gathered parameters after use; drop it",
    "stage3_max_reuse_distance": "FSDP frees each layer's gathered parameters after use; drop it",
    "stage3_gather_16bit_weights_on_model_save": "`mltrain export RUN --out DIR` writes Hugging Face safetensors "
    "from any checkpoint; drop it",
    "gather_16bit_weights_on_model_save": "`mltrain export RUN --out DIR` writes Hugging Face safetensors; drop it",
    "memory_efficient_linear": "no equivalent; drop it",
    "mics_shard_size": "MiCS sub-group sharding: no equivalent (FSDP shards over all GPUs); drop it",
    "elastic_checkpoint": "mltrain checkpoints reshard on resume by themselves; drop it",
    "load_from_fp32_weights": "mltrain checkpoints hold fp32 master weights; drop it",
    "ignore_unused_parameters": "no equivalent; drop it",
}

TOP_KEYS_ADVICE: dict[str, str] = {
    "amp": "mltrain trains in bf16 autocast (train.dtype: bf16) or fp32; drop Apex AMP",
    "communication_data_type": COMM_TUNING,
    "prescale_gradients": COMM_TUNING,
    "gradient_predivide_factor": COMM_TUNING,
    "sparse_gradients": "no equivalent; drop it",
    "wall_clock_breakdown": LOGGING,
    "steps_per_print": "use train.log_every",
    "tensorboard": LOGGING,
    "wandb": LOGGING,
    "csv_monitor": LOGGING,
    "comet": LOGGING,
    "comms_logger": LOGGING,
    "flops_profiler": "mltrain logs MFU per logged step (metrics.jsonl mfu); drop it",
    "dump_state": "no equivalent; drop it",
    "zero_allow_untested_optimizer": "mltrain always uses its own AdamW; drop it",
    "zero_force_ds_cpu_optimizer": OFFLOAD_ADVICE,
    "checkpoint": "mltrain checkpoints every checkpoint.every_steps steps (DCP, resharding on resume); drop it",
    "data_efficiency": "curriculum / data routing: no equivalent; drop it",
    "curriculum_learning": "no equivalent; drop it",
    "compression_training": "no equivalent; drop it",
    "aio": "NVMe offload I/O: " + OFFLOAD_ADVICE,
    "pipeline": "pipeline parallelism: not in mltrain (parallel: ddp or fsdp)",
    "tensor_parallel": "tensor parallelism: not in mltrain (parallel: ddp or fsdp)",
    "sequence_parallel_size": "sequence parallelism: not in mltrain",
    "elasticity": "mltrain resumes on another world size by itself (launch.min_nodes); drop it",
    "autotuning": "no equivalent; use `mltrain plan` for sizes and bench/ for throughput",
    "memory_breakdown": "mltrain logs mem_gib per logged step; drop it",
    "seed": "use the run config's top-level seed:",
}

MAPPED_TOP = {
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "train_batch_size",
    "gradient_clipping",
    "bf16",
    "bfloat16",
    "fp16",
    "zero_optimization",
    "optimizer",
    "scheduler",
    "activation_checkpointing",
}


@dataclass
class Conversion:
    """The result: `train` (mltrain keys -> values), where each came from, and what could not be mapped."""

    train: dict[str, Any] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # mltrain key -> "ds key = value"
    auto: list[tuple[str, str, str]] = field(default_factory=list)  # (ds key, HF arg, mltrain key)
    unmapped: list[tuple[str, str]] = field(default_factory=list)  # (ds key, what to do instead)
    notes: list[str] = field(default_factory=list)


def load_ds_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: line {e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a JSON object, got {type(data).__name__}")
    return data


def _is_auto(v: Any) -> bool:
    return isinstance(v, str) and v.strip().lower() == "auto"


class _Converter:
    def __init__(self, ds: dict[str, Any], source: str) -> None:
        self.ds, self.source, self.out = ds, source, Conversion()

    def number(self, key: str, value: Any, mltrain_key: str, kind: type = float) -> None:
        """Map one numeric value (or record that it is "auto")."""
        if _is_auto(value):
            self.out.auto.append((key, HF_AUTO_SOURCE.get(key, "the Trainer"), mltrain_key))
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{self.source}: {key}: expected a number or "auto", got {value!r}')
        if kind is int and float(value) != int(value):
            raise ConfigError(f"{self.source}: {key}: expected a whole number, got {value!r}")
        self.out.train[mltrain_key] = kind(value)
        self.out.origin[mltrain_key] = f"{key} = {value}"

    def run(self) -> Conversion:
        ds, out = self.ds, self.out
        for key in ds:
            if key in MAPPED_TOP:
                continue
            out.unmapped.append((key, TOP_KEYS_ADVICE.get(key, "unknown to this converter: check it by hand")))
        if "train_micro_batch_size_per_gpu" in ds:
            self.number("train_micro_batch_size_per_gpu", ds["train_micro_batch_size_per_gpu"], "micro_batch_size", int)
        if "gradient_accumulation_steps" in ds:
            self.number("gradient_accumulation_steps", ds["gradient_accumulation_steps"], "grad_accum_steps", int)
        if "train_batch_size" in ds:
            tb = ds["train_batch_size"]
            out.notes.append(
                f"train_batch_size = {tb}: mltrain derives the global batch as micro_batch_size x "
                "grad_accum_steps x GPUs (x seq_len tokens); check it matches"
            )
        if "gradient_clipping" in ds:
            self.number("gradient_clipping", ds["gradient_clipping"], "grad_clip")
        self.precision()
        self.zero()
        self.optimizer()
        self.scheduler()
        if "activation_checkpointing" in ds:
            ac = ds["activation_checkpointing"] or {}
            out.train["activation_checkpointing"] = True
            out.origin["activation_checkpointing"] = "activation_checkpointing section"
            for sub in ("partition_activations", "cpu_checkpointing", "contiguous_memory_optimization"):
                if isinstance(ac, dict) and ac.get(sub):
                    out.unmapped.append(
                        (f"activation_checkpointing.{sub}", "no equivalent: mltrain recomputes each block; drop it")
                    )
        return out

    def precision(self) -> None:
        ds, out = self.ds, self.out
        bf16 = ds.get("bf16", ds.get("bfloat16"))
        fp16 = ds.get("fp16")
        bf_on = isinstance(bf16, dict) and bf16.get("enabled")
        fp_on = isinstance(fp16, dict) and fp16.get("enabled")
        if _is_auto(bf_on) or _is_auto(fp_on):
            which = "bf16.enabled" if _is_auto(bf_on) else "fp16.enabled"
            out.auto.append((which, HF_AUTO_SOURCE[which], "dtype"))
            out.train["dtype"] = "auto"
            out.origin["dtype"] = f"{which} = auto: bf16 where the GPU supports it, else fp32"
        elif bf_on:
            out.train["dtype"] = "bf16"
            out.origin["dtype"] = "bf16.enabled = true"
        elif fp_on:
            out.train["dtype"] = "bf16"
            out.origin["dtype"] = "fp16.enabled = true"
            out.unmapped.append(
                (
                    "fp16",
                    "mltrain has no fp16 (no loss scaling): it trains in bf16 on GPUs that have it (A100, H100, L40S, "
                    "A10G) or fp32; set train.dtype: fp32 on V100/T4",
                )
            )
        elif bf16 is not None or fp16 is not None:
            out.train["dtype"] = "fp32"
            out.origin["dtype"] = "bf16/fp16 disabled"
        if isinstance(fp16, dict):
            for sub in ("loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis", "min_loss_scale"):
                if sub in fp16 and fp_on:
                    out.unmapped.append((f"fp16.{sub}", "bf16 needs no loss scaling; drop it"))

    def zero(self) -> None:
        ds, out = self.ds, self.out
        z = ds.get("zero_optimization")
        if z is None:
            out.train["parallel"] = "ddp"
            out.origin["parallel"] = "no zero_optimization (plain data parallel)"
            return
        if not isinstance(z, dict):
            raise ConfigError(f"{self.source}: zero_optimization: expected an object, got {z!r}")
        stage = z.get("stage", 0)
        if _is_auto(stage) or stage not in (0, 1, 2, 3):
            raise ConfigError(f"{self.source}: zero_optimization.stage: expected 0, 1, 2 or 3, got {stage!r}")
        if stage == 3:
            out.train["parallel"] = "fsdp"
            out.origin["parallel"] = "zero_optimization.stage = 3 (parameters, gradients, optimizer state sharded)"
        else:
            out.train["parallel"] = "ddp"
            out.origin["parallel"] = f"zero_optimization.stage = {stage}"
            out.notes.append(f"ZeRO-{stage} -> ddp, what is lost: {ZERO_LOSS[stage]}")
        for key, value in z.items():
            if key == "stage":
                continue
            if key in ("offload_optimizer", "offload_param"):
                device = value.get("device", "none") if isinstance(value, dict) else value
                if device in (None, "none", False):
                    continue
                out.unmapped.append((f"zero_optimization.{key} (device {device})", OFFLOAD_ADVICE))
                continue
            advice = ZERO_KEYS.get(key, "unknown to this converter: check it by hand")
            if advice is not None:
                out.unmapped.append((f"zero_optimization.{key}", advice))

    def optimizer(self) -> None:
        ds, out = self.ds, self.out
        opt = ds.get("optimizer")
        if opt is None:
            out.notes.append(
                "no optimizer section: the HF Trainer's optimizer (AdamW by default) is used; mltrain uses AdamW"
            )
            return
        if not isinstance(opt, dict):
            raise ConfigError(f"{self.source}: optimizer: expected an object, got {opt!r}")
        kind = str(opt.get("type", ""))
        if kind.lower() not in ("adam", "adamw", "fusedadam", "cpuadam", "deepspeedcpuadam"):
            out.unmapped.append(
                (f"optimizer.type = {kind}", "mltrain trains with AdamW only; its settings below come from train:")
            )
            return
        params = opt.get("params") or {}
        if kind.lower() == "adam" and params.get("adam_w_mode", True) is not True:
            out.notes.append("optimizer Adam with adam_w_mode false (L2 decay): mltrain uses decoupled AdamW decay")
        if "lr" in params:
            self.number("optimizer.params.lr", params["lr"], "lr")
        if "betas" in params:
            b = params["betas"]
            if _is_auto(b):
                out.auto.append(("optimizer.params.betas", HF_AUTO_SOURCE["optimizer.params.betas"], "beta1, beta2"))
            elif isinstance(b, (list, tuple)) and len(b) == 2 and all(isinstance(x, (int, float)) for x in b):
                out.train["beta1"], out.train["beta2"] = float(b[0]), float(b[1])
                out.origin["beta1"] = out.origin["beta2"] = f"optimizer.params.betas = {list(b)}"
            else:
                raise ConfigError(f'{self.source}: optimizer.params.betas: expected [b1, b2] or "auto", got {b!r}')
        if "weight_decay" in params:
            self.number("optimizer.params.weight_decay", params["weight_decay"], "weight_decay")
        if "eps" in params and not _is_auto(params["eps"]) and params["eps"] != 1e-8:
            out.unmapped.append(("optimizer.params.eps", "mltrain's AdamW uses eps 1e-8; not configurable"))
        for key in params:
            if key not in ("lr", "betas", "weight_decay", "eps", "adam_w_mode", "torch_adam", "bias_correction"):
                out.unmapped.append((f"optimizer.params.{key}", "no equivalent in mltrain's AdamW; drop it"))

    def scheduler(self) -> None:
        ds, out = self.ds, self.out
        sch = ds.get("scheduler")
        if sch is None:
            return
        if not isinstance(sch, dict):
            raise ConfigError(f"{self.source}: scheduler: expected an object, got {sch!r}")
        kind = str(sch.get("type", ""))
        params = sch.get("params") or {}
        if kind not in ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR"):
            out.unmapped.append(
                (f"scheduler.type = {kind}", "mltrain's schedule is linear warmup then cosine to lr x min_lr_ratio")
            )
            return
        if "warmup_num_steps" in params:
            self.number("scheduler.params.warmup_num_steps", params["warmup_num_steps"], "warmup_steps", int)
        if "warmup_max_lr" in params and "lr" not in out.train:
            self.number("scheduler.params.warmup_max_lr", params["warmup_max_lr"], "lr")
        if "total_num_steps" in params:
            self.number("scheduler.params.total_num_steps", params["total_num_steps"], "max_steps", int)
        if params.get("warmup_type", "log") == "log":
            out.notes.append(f"{kind}: DeepSpeed warms up logarithmically by default; mltrain warms up linearly")
        if kind == "WarmupLR":
            out.train["min_lr_ratio"] = 1.0
            out.origin["min_lr_ratio"] = "WarmupLR: constant lr after warmup"
        elif kind == "WarmupDecayLR":
            out.train["min_lr_ratio"] = 0.0
            out.origin["min_lr_ratio"] = "WarmupDecayLR decays to 0"
            out.notes.append("WarmupDecayLR decays linearly; mltrain decays with a cosine (same end points)")
        else:
            ratio = params.get("cos_min_ratio", 0.0001)
            if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
                out.train["min_lr_ratio"] = float(ratio)
                out.origin["min_lr_ratio"] = f"WarmupCosineLR cos_min_ratio = {ratio}"
        if params.get("warmup_min_lr") not in (None, 0, 0.0) and not _is_auto(params.get("warmup_min_lr")):
            out.unmapped.append(("scheduler.params.warmup_min_lr", "mltrain warms up from 0"))
        if params.get("warmup_min_ratio") not in (None, 0, 0.0):
            out.unmapped.append(("scheduler.params.warmup_min_ratio", "mltrain warms up from 0"))


def convert(ds: dict[str, Any], source: str = "ds_config.json") -> Conversion:
    """Map a DeepSpeed config (a dict as DeepSpeed reads it) to mltrain train: settings."""
    return _Converter(ds, source).run()


def render(conv: Conversion, source: str) -> str:
    """YAML to paste into a run config, each key commented with its DeepSpeed origin, then what is not mapped."""
    lines = [f"# mltrain train: settings equivalent to {source}", "train:"]
    for key, value in conv.train.items():
        dumped = yaml.safe_dump({key: value}, default_flow_style=True).strip().strip("{}")
        lines.append(f"  {dumped}  # {conv.origin.get(key, '')}".rstrip())
    if conv.auto:
        lines.append('# "auto" in the DeepSpeed config: the HF Trainer fills these from its TrainingArguments;')
        lines.append("# set the mltrain key to the value your script passes:")
        for ds_key, hf_arg, ml_key in conv.auto:
            lines.append(f"#   {ds_key} = auto -> TrainingArguments {hf_arg} -> train.{ml_key}")
    if conv.notes:
        lines.append("# notes:")
        lines += [f"#   {n}" for n in conv.notes]
    if conv.unmapped:
        lines.append(f"# not mapped ({len(conv.unmapped)}): what to do instead")
        lines += [f"#   {k}: {advice}" for k, advice in conv.unmapped]
    else:
        lines.append("# every option was mapped")
    return "\n".join(lines) + "\n"


def from_deepspeed_command(path: str | Path) -> str:
    """The text `mltrain config from-deepspeed` prints."""
    return render(convert(load_ds_config(path), str(path)), str(path))
