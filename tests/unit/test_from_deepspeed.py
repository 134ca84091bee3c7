"""`mltrain config from-deepspeed`: ZeRO-1/2/3 configs, offload, "auto" values, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mltrain.config import TrainConfig
from mltrain.errors import ConfigError
from mltrain.integrations.from_deepspeed import convert, from_deepspeed_command, load_ds_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_trainer" / "ds_config.json"


def _zero(stage: int, **zero) -> dict:
    return {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 8,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": stage, **zero},
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}},
        "scheduler": {
            "type": "WarmupDecayLR",
            "params": {"warmup_num_steps": 100, "total_num_steps": 2000, "warmup_max_lr": 3e-4},
        },
    }


def _train_block(text: str) -> dict:
    """The printed YAML parses, and its train: block is a valid mltrain TrainConfig."""
    data = yaml.safe_load(text)
    TrainConfig.model_validate(data["train"])
    return data["train"]


@pytest.mark.parametrize("stage, parallel", [(1, "ddp"), (2, "ddp"), (3, "fsdp")])
def test_zero_stages(stage, parallel):
    conv = convert(_zero(stage))
    assert conv.train == {
        "micro_batch_size": 4,
        "grad_accum_steps": 8,
        "grad_clip": 1.0,
        "dtype": "bf16",
        "parallel": parallel,
        "lr": 3e-4,
        "beta1": 0.9,
        "beta2": 0.95,
        "weight_decay": 0.1,
        "warmup_steps": 100,
        "max_steps": 2000,
        "min_lr_ratio": 0.0,
    }
    lost = [n for n in conv.notes if "what is lost" in n]
    assert bool(lost) == (stage < 3)  # ddp says what it loses against ZeRO-1/2
    if stage == 2:
        assert "gradients are replicated" in lost[0]
    assert conv.unmapped == []


def test_offload_zeropp_and_unknown_are_named_with_advice(tmp_path):
    ds = _zero(
        3,
        offload_optimizer={"device": "cpu", "pin_memory": True},
        offload_param={"device": "nvme", "nvme_path": "/local"},
        zero_quantized_weights=True,
        zero_hpz_partition_size=8,
        stage3_gather_16bit_weights_on_model_save=True,
    )
    ds["fp16"] = {"enabled": False}
    ds["wall_clock_breakdown"] = False
    ds["some_new_option"] = 1
    p = tmp_path / "ds.json"
    p.write_text(json.dumps(ds))
    text = from_deepspeed_command(p)
    train = _train_block(text)
    assert train["parallel"] == "fsdp"
    for key, words in [
        ("zero_optimization.offload_optimizer (device cpu)", "use parallel: fsdp"),
        ("zero_optimization.offload_param (device nvme)", "activation_checkpointing"),
        ("zero_optimization.zero_quantized_weights", "ZeRO++"),
        ("zero_optimization.zero_hpz_partition_size", "ZeRO++"),
        ("zero_optimization.stage3_gather_16bit_weights_on_model_save", "mltrain export"),
        ("wall_clock_breakdown", "metrics.jsonl"),
        ("some_new_option", "check it by hand"),
    ]:
        assert any(line.startswith(f"#   {key}: ") and words in line for line in text.splitlines()), key
    assert "# not mapped (7)" in text


def test_offload_to_none_is_not_reported():
    conv = convert(_zero(2, offload_optimizer={"device": "none"}))
    assert conv.unmapped == []


def test_auto_values_are_reported_as_taken_from_the_trainer_args():
    conv = convert(json.loads(EXAMPLE.read_text()))
    autos = {(ds, hf) for ds, hf, _ in conv.auto}
    assert ("train_micro_batch_size_per_gpu", "per_device_train_batch_size") in autos
    assert ("gradient_accumulation_steps", "gradient_accumulation_steps") in autos
    assert ("gradient_clipping", "max_grad_norm") in autos
    assert ("bf16.enabled", "bf16") in autos
    assert "micro_batch_size" not in conv.train  # left for the user to set from the Trainer args
    assert conv.train["parallel"] == "ddp"
    ds = _zero(2)
    ds["optimizer"]["params"] = {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}
    ds["scheduler"] = {"type": "WarmupCosineLR", "params": {"warmup_num_steps": "auto", "total_num_steps": "auto"}}
    conv = convert(ds)
    got = {ds_key: hf for ds_key, hf, _ in conv.auto}
    assert got["optimizer.params.lr"] == "learning_rate" and got["optimizer.params.betas"] == "adam_beta1, adam_beta2"
    assert got["scheduler.params.total_num_steps"] == "max_steps"
    assert "lr" not in conv.train and conv.train["min_lr_ratio"] == pytest.approx(0.0001)


def test_fp16_maps_to_bf16_with_a_reason():
    ds = _zero(1)
    ds.pop("bf16")
    ds["fp16"] = {"enabled": True, "loss_scale": 0}
    conv = convert(ds)
    assert conv.train["dtype"] == "bf16"
    keys = [k for k, _ in conv.unmapped]
    assert "fp16" in keys and "fp16.loss_scale" in keys


def test_other_optimizer_and_scheduler_are_named():
    ds = _zero(2)
    ds["optimizer"] = {"type": "OneBitLamb", "params": {"lr": 1e-3}}
    ds["scheduler"] = {"type": "OneCycle", "params": {}}
    conv = convert(ds)
    assert {k for k, _ in conv.unmapped} == {"optimizer.type = OneBitLamb", "scheduler.type = OneCycle"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("{", "invalid JSON"),
        ("[1]", "top level must be a JSON object"),
        ('{"train_micro_batch_size_per_gpu": "four"}', 'train_micro_batch_size_per_gpu: expected a number or "auto"'),
        ('{"zero_optimization": {"stage": 4}}', "zero_optimization.stage: expected 0, 1, 2 or 3"),
    ],
)
def test_bad_input_is_one_line(tmp_path, text, words):
    p = tmp_path / "ds.json"
    p.write_text(text)
    with pytest.raises(ConfigError, match=words):
        from_deepspeed_command(p)
    with pytest.raises(ConfigError, match="file not found"):
        load_ds_config(tmp_path / "missing.json")


def test_cli(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "config", "from-deepspeed", str(EXAMPLE)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert _train_block(r.stdout)["parallel"] == "ddp" and "= auto -> TrainingArguments" in r.stdout
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    r = subprocess.run(
        [sys.executable, "-m", "mltrain", "config", "from-deepspeed", str(bad)], capture_output=True, text=True
    )
    assert r.returncode == 2 and "invalid JSON" in r.stderr and "Traceback" not in r.stderr
